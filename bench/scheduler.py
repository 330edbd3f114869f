"""Scheduler benchmark (issue 5): many per-minute BackupPolicies against the API emulator, the
Job runner disabled, the operator as its own process.

    .venv/bin/python bench/scheduler.py                  # 1,000 policies, 2 ticks
    .venv/bin/python bench/scheduler.py --smoke          # 50 policies, 1 tick (CI size)

Measured, per Job: the time its watch event reached this process minus its tick (the
RecoveryPoint's spec.scheduledTime; jitterSeconds is 0, so every policy fires at the same
second: the worst case). Also the operator's peak RSS (VmHWM). Targets: p99 <= 2 s,
RSS <= 300 MiB. Every component is a separate process on this machine: the emulator, a real
PostgreSQL, moto S3, the operator, and this watcher.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from kubernetes import client, config  # noqa: E402

from aegis.reconcilers.schedule import jitter_seconds  # noqa: E402
from aegis.sandbox.servers import MotoServer, PostgresServer  # noqa: E402

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
TARGET_P99, TARGET_RSS_MIB = 2.0, 300.0


def start_emulator(workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    kubeconfig = workdir / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aegis.sandbox.apiserver",
            "--port",
            "0",
            "--crds",
            str(ROOT / "crds"),
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the URL, printed once it listens
    return proc, kubeconfig


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_now_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="50 policies, 1 tick")
    parser.add_argument(
        "--jitter", type=int, default=0, help="spec.jitterSeconds of every policy (0: all fire "
        "at the same second; latency is then measured from each run's own jittered time)")
    parser.add_argument(
        "--settle", type=float, default=45.0, help="seconds the operator gets to take every "
        "policy in before the first measured tick (more for thousands of policies)")
    parser.add_argument(
        "--profile", metavar="SVG|TXT", help="record the operator's GIL-holding samples with "
        "py-spy (pip install py-spy; not a dependency) from 5 s before the first tick, as a "
        "flame graph (.svg) or collapsed stacks (.txt)")
    parser.add_argument(
        "--rss-every", type=float, default=0.0, metavar="SECONDS", help="sample the operator's "
        "RSS this often and print the samples (seconds relative to the first measured tick)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.policies, args.ticks = 50, 1

    workdir = Path(tempfile.mkdtemp(prefix="aegis-bench-scheduler-"))
    emulator, kubeconfig = start_emulator(workdir)
    pg = PostgresServer.start()
    moto = MotoServer.start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        moto.s3_client().create_bucket(Bucket="bench")
        namespace = "bench"
        core.create_namespace({"metadata": {"name": namespace}})

        def secret(name: str, data: dict[str, str]) -> None:
            core.create_namespaced_secret(
                namespace,
                {
                    "metadata": {"name": name},
                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
                },
            )

        secret("db", {"username": pg.user, "password": pg.password})
        secret("keys", {"k1": base64.b64encode(secrets.token_bytes(32)).decode()})
        secret("s3", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        spec = {
            "schedule": "* * * * *",
            "source": {
                "postgres": {
                    "host": pg.host,
                    "port": pg.port,
                    "database": "postgres",
                    "userSecretRef": {"name": "db", "key": "username"},
                    "passwordSecretRef": {"name": "db", "key": "password"},
                }
            },
            "storage": {
                "bucket": "bench",
                "endpoint": moto.endpoint,
                "credentialsSecretRef": {"name": "s3"},
            },
            "encryption": {"keySecretRef": {"name": "keys"}},
            "concurrencyPolicy": "Allow",
            "jitterSeconds": args.jitter,
        }
        started = time.monotonic()
        for i in range(args.policies):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "backuppolicies",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "BackupPolicy",
                    "metadata": {"name": f"p{i:04d}"},
                    "spec": spec,
                },
            )
        print(f"created {args.policies} policies in {time.monotonic() - started:.1f}s", flush=True)

        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "AEGIS_METRICS_PORT": "0",
            "AEGIS_HEALTH_PORT": "0",
            "AEGIS_LOG_FORMAT": "text",
            "AEGIS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "AEGIS_CATALOG_SYNC_SECONDS": "3600",
            "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
            # as the chart sets it (mallocArenaMax); MALLOC_ARENA_MAX= in the environment overrides
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
        }
        log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed with the process
        # BENCH_WRAP: a command to run the operator under (e.g. "-m memray run -o out.bin"),
        # for memory profiles; not a dependency.
        wrap = os.environ.get("BENCH_WRAP", "").split()
        operator_started = time.monotonic()
        operator = subprocess.Popen(
            [sys.executable, *wrap, "-m", "aegis", "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        samples: list[tuple[float, float]] = []
        if args.rss_every > 0:
            pid = operator.pid

            def sample_rss() -> None:
                while operator is not None and operator.poll() is None:
                    samples.append((time.time(), rss_now_mib(pid)))
                    time.sleep(args.rss_every)

            threading.Thread(target=sample_rss, daemon=True).start()

        latencies: list[float] = []
        seen: set[str] = set()
        expected = args.policies * args.ticks
        # The first tick starts after the operator has taken every policy in.
        first_tick = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.settle)).replace(
            second=0, microsecond=0
        ) + dt.timedelta(minutes=1)
        last_tick = first_tick + dt.timedelta(minutes=args.ticks - 1)
        print(f"measuring ticks {first_tick:%H:%M} .. {last_tick:%H:%M} UTC", flush=True)
        done = threading.Event()

        def watch_jobs() -> None:
            # A raw JSON stream: the client's model deserialization would queue events and
            # measure this process instead of the operator.
            batch = client.BatchV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
            response = batch.list_namespaced_job(
                namespace, watch=True, timeout_seconds=600, _preload_content=False
            )
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                arrived = dt.datetime.now(dt.UTC)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    job = event["object"]
                    name = job["metadata"]["name"]
                    if event["type"] != "ADDED" or name in seen:
                        continue
                    seen.add(name)
                    owners = job["metadata"].get("ownerReferences") or [{}]
                    policy, stamp = owners[0].get("name", "").rsplit("-", 1)
                    tick = dt.datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
                    due = tick + dt.timedelta(
                        seconds=jitter_seconds(namespace, policy, args.jitter)
                    )
                    if first_tick <= tick <= last_tick:
                        latencies.append((arrived - due).total_seconds())
                    if len(latencies) >= expected:
                        done.set()
                        response.release_conn()
                        return

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        spy: subprocess.Popen[bytes] | None = None
        if args.profile:
            lead = (first_tick - dt.datetime.now(dt.UTC)).total_seconds() - 5
            time.sleep(max(0.0, lead))
            seconds = int((last_tick - first_tick).total_seconds() + args.jitter + 20)
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(operator.pid), "--duration", str(seconds),
                 "--rate", "50", "--gil", "--output", args.profile,
                 *(["--format", "raw"] if args.profile.endswith(".txt") else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        deadline = (last_tick - dt.datetime.now(dt.UTC)).total_seconds() + 60 + args.jitter
        done.wait(timeout=max(deadline, 60))
        rss = rss_peak_mib(operator.pid)
        rss_end = rss_now_mib(operator.pid)
        # CPU since start: which process the box's two cores went to (what bounds the run).
        cpu = {"operator": cpu_seconds(operator.pid), "API emulator": cpu_seconds(emulator.pid)}
        wall = time.monotonic() - operator_started
        if spy is not None:
            spy.wait()
            print(f"profile: {args.profile}")
        points = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints")
        jobs = client.BatchV1Api(api).list_namespaced_job(namespace)
        print(
            f"(recovery points {len(points['items'])}, Jobs {len(jobs.items)}; "
            f"operator log {workdir / 'operator.log'})"
        )
        print()
        print(f"policies                   {args.policies} (jitterSeconds {args.jitter}; "
              f"load average {os.getloadavg()[0]:.1f})")
        print(f"ticks measured             {args.ticks}")
        print(f"Jobs seen for those ticks  {len(latencies)} of {expected}")
        if latencies:
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            print(f"tick -> Job p50            {p50:.3f} s")
            print(f"tick -> Job p99            {p99:.3f} s   (target <= {TARGET_P99} s)")
            print(f"tick -> Job max            {max(latencies):.3f} s")
            print(f"tick -> Job mean           {statistics.fmean(latencies):.3f} s")
        print(f"operator peak RSS          {rss:.0f} MiB   (target <= {TARGET_RSS_MIB:.0f} MiB)")
        print(f"operator RSS at the end    {rss_end:.0f} MiB")
        print(f"CPU seconds over {wall:.0f} s   "
              + ", ".join(f"{name} {seconds:.0f}" for name, seconds in cpu.items()))
        if samples:
            tick = first_tick.timestamp()
            print("RSS samples (s from the first tick: MiB):")
            print("  " + ", ".join(f"{t - tick:+.0f}: {m:.0f}" for t, m in samples))
        ok = len(latencies) == expected and percentile(latencies, 0.99) <= TARGET_P99
        ok = ok and rss <= TARGET_RSS_MIB
        print("RESULT", "met" if ok else "missed")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        moto.stop()
        pg.stop()
        emulator.terminate()
        emulator.wait(timeout=20)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
