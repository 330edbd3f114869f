"""Benchmark: Aegis Redis backup (method Sync) vs `redis-cli --rdb` to a local file, measured
in the same run on the same machine, plus the Aegis restore into an empty server (by
replication from the agent; see docs/restore.md).

    .venv/bin/python bench/agent_redis.py            # 1,000,000 keys
    .venv/bin/python bench/agent_redis.py --smoke    # 50,000 keys, for CI
    .venv/bin/python bench/agent_redis.py --repeat 3 # medians of 3 back-to-back runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from agent_pg import AEGIS, timed  # type: ignore[import-not-found]  # noqa: E402

from aegis.sandbox.servers import MotoServer, RedisServer  # noqa: E402

BUCKET = "bench-redis"


def fill(server: RedisServer, keys: int) -> None:
    """Session-cache-like data: short strings, hashes, some TTLs."""
    client = server.client()
    batch = 10_000
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(keys, start + batch)):
            if i % 10 == 0:
                pipe.hset(
                    f"user:{i}",
                    mapping={
                        "name": f"n{i}",
                        "plan": "pro" if i % 3 else "free",
                        "seen": str(1700000000 + i),
                    },
                )
            else:
                pipe.set(
                    f"session:{i:08d}",
                    os.urandom(12).hex() + f":{i}:" + "x" * (i % 40),
                    ex=3600 + i % 86400 if i % 4 == 0 else None,
                )
        pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each ratio's pair back to back N times; report the medians",
    )
    args = parser.parse_args()
    keys = 50_000 if args.smoke else args.keys
    source = RedisServer.start()
    target = RedisServer.start()
    moto = MotoServer.start()
    work = Path(tempfile.mkdtemp(prefix="aegis-bench-redis-"))
    try:
        moto.s3_client().create_bucket(Bucket=BUCKET)
        (work / "keys").mkdir()
        (work / "keys" / "k1").write_text(os.urandom(32).hex())
        t0 = time.perf_counter()
        fill(source, keys)
        print(f"loaded {keys} keys in {time.perf_counter() - t0:.0f}s", flush=True)
        env = {**os.environ, **moto.aws_env()}
        # redis-cli --rdb and the agent both ask for a diskless transfer, which the master
        # delays by repl-diskless-sync-delay (5 s) to batch replicas: measure the transfer.
        source.client().config_set("repl-diskless-sync-delay", "0")
        cli = ["redis-cli", "-h", source.host, "-p", str(source.port), "--rdb"]
        timed([*cli, str(work / "warm.rdb")], env)
        rdb = work / "dump.rdb"
        backup_args = [
            AEGIS,
            "agent",
            "backup",
            "--source",
            "redis",
            "--host",
            source.host,
            "--port",
            str(source.port),
            "--bucket",
            BUCKET,
            "--namespace",
            "b",
            "--policy",
            "r",
            "--keys-dir",
            str(work / "keys"),
            "--progress-seconds",
            "10",
        ]
        # Each ratio's pair runs back to back, `repeat` times; the medians are reported.
        runs: dict[str, list[float]] = {}
        ratio_runs: dict[str, list[float]] = {}
        for i in range(1, max(1, args.repeat) + 1):
            cli_run = timed([*cli, str(rdb)], env).seconds
            backup = timed([*backup_args, "--point", f"rp-{i}"], env, stdout=subprocess.PIPE)
            target.client().flushall()
            restore = timed(
                [
                    AEGIS,
                    "agent",
                    "restore",
                    "--manifest",
                    f"s3://{BUCKET}/b/r/rp-{i}",
                    "--target",
                    "redis",
                    "--host",
                    target.host,
                    "--port",
                    str(target.port),
                    "--keys-dir",
                    str(work / "keys"),
                    "--progress-seconds",
                    "10",
                ],
                env,
                stdout=subprocess.PIPE,
            )
            assert target.client().dbsize() == source.client().dbsize()
            for name, value in (
                ("redis_cli_rdb_file", cli_run),
                ("aegis_backup", backup.seconds),
                ("aegis_backup_peak_rss_mib", backup.max_rss_kib / 1024),
                ("aegis_restore", restore.seconds),
            ):
                runs.setdefault(name, []).append(value)
            ratio_runs.setdefault("backup/redis-cli --rdb (<=1.2)", []).append(
                backup.seconds / cli_run
            )
            ratio_runs.setdefault("restore/redis-cli --rdb (<=5)", []).append(
                restore.seconds / cli_run
            )
        results: dict[str, float] = {n: statistics.median(v) for n, v in runs.items()}
        results["rdb_mib"] = rdb.stat().st_size / 2**20
        diskless = timed(
            [*backup_args, "--point", "rp-disk", "--no-diskless"], env, stdout=subprocess.PIPE
        )
        results["aegis_backup_disk_based"] = diskless.seconds
        ratios = {n: statistics.median(v) for n, v in ratio_runs.items()}
        ratios["backup --no-diskless/redis-cli --rdb"] = (
            results["aegis_backup_disk_based"] / results["redis_cli_rdb_file"]
        )
        if args.repeat > 1:
            for name, values in ratio_runs.items():
                print(f"RUNS  {name:36s} " + " ".join(f"{v:6.3f}" for v in values))
        for name, value in results.items():
            print(f"{name:28s} {value:10.2f}")
        for name, value in ratios.items():
            print(f"RATIO {name:36s} {value:6.3f}")
        print(json.dumps({"keys": keys, "results": results, "ratios": ratios}))
        return 0
    finally:
        source.stop()
        target.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
