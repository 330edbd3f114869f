"""Helpers for agent integration tests: running the agent as a Job does (a real subprocess of
.venv/bin/aegis) and a TCP proxy that can cut S3 off mid-upload."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AEGIS = str(Path(sys.executable).with_name("aegis"))
LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # l_onoff=1, l_linger=0: close sends RST


@dataclass
class AgentRun:
    code: int
    result: dict[str, Any]
    stdout: str
    stderr: str


def run_agent(args: list[str], env: dict[str, str], timeout: float = 300) -> AgentRun:
    proc = subprocess.run(
        [AEGIS, "agent", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no result line; stderr: {proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    return AgentRun(proc.returncode, result, proc.stdout, proc.stderr)


class CuttableProxy:
    """Forwards TCP to a backend until `cut()`: then every connection is reset and new ones are
    refused (closed at once) until `restore()`. Cuts after `cut_after` upstream bytes if set."""

    def __init__(self, backend: tuple[str, int], cut_after: int | None = None) -> None:
        self.backend = backend
        self.cut_after = cut_after
        self.forwarded = 0
        self.cut_event = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.backend)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self.cut_event.is_set():
                    client.close()
                    upstream.close()
                    continue
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.cut_event.is_set():
                    break
                dst.sendall(data)
                if upstream:
                    with self._lock:
                        self.forwarded += len(data)
                        over = self.cut_after is not None and self.forwarded >= self.cut_after
                        if over:
                            self.cut_after = None
                    if over:
                        self.cut()
                        break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        with self._lock:
            self.cut_event.set()
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.cut_after = None
        self.cut_event.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
