"""Fixtures of the failover integration tests: HTTP servers the tests control."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from failover_helpers import Endpoint, Hung


@pytest.fixture
def http_endpoint() -> Iterator[Endpoint]:
    endpoint: Endpoint

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            endpoint.requests.append({
                "method": self.command, "path": self.path, "headers": dict(self.headers),
                "json": json.loads(body) if body else None, "time": time.monotonic(),
            })
            if endpoint.on_request is not None:
                endpoint.on_request()
            self.send_response(endpoint.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    endpoint = Endpoint(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hung_server(request: pytest.FixtureRequest) -> Iterator[Hung]:
    trickle = bool(getattr(request, "param", False))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            if trickle:
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

    def drip(conn: socket.socket) -> None:
        # one header byte every 0.2 s: each read succeeds, so socket timeouts never fire
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Hung(listener.getsockname()[1], trickle, stop)
    finally:
        stop.set()
        thread.join(2)
        for conn in conns:
            conn.close()
        listener.close()
