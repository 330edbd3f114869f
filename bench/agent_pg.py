"""Benchmark: Aegis PostgreSQL backup and restore against the obvious baselines, measured in
the same run on the same machine (real PostgreSQL, moto S3 over HTTP on 127.0.0.1).

    .venv/bin/python bench/agent_pg.py            # ~1.2 GB of production-like rows
    .venv/bin/python bench/agent_pg.py --smoke    # ~40 MB, for CI
    .venv/bin/python bench/agent_pg.py --scale 4  # ~4.8 GB (peak-RSS check at a larger size)
    .venv/bin/python bench/agent_pg.py --scale 0.25 --repeat 3  # medians of 3 back-to-back pairs

Prints each measurement and the ratios the issue sets targets for, and a JSON summary line.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from aegis.sandbox.servers import MotoServer, PostgresServer  # noqa: E402

AEGIS = str(Path(sys.executable).with_name("aegis"))
ROWS_PER_SCALE = 4_600_000  # about 1.2 GB of dump per unit of scale
BUCKET = "bench-agent"

DATA = """
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz,
    status text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    tax numeric(10, 4),
    digest text NOT NULL,
    note text,
    doc jsonb
);
INSERT INTO orders
SELECT g,
       (g * 2654435761) % 1000003,
       timestamptz '2023-01-01' + (g * 7.3) * interval '1 second',
       CASE WHEN g % 3 = 0 THEN timestamptz '2023-01-01' + (g * 9.1) * interval '1 second' END,
       (ARRAY['new', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'])[1 + g % 6],
       ((g * 7919) % 1000000) / 100.0,
       ((g * 104729) % 100000) / 10000.0,
       md5(g::text),
       left(md5((g * 3)::text) || ' ' || md5((g * 5)::text) || ' ' || md5((g * 7)::text)
            || ' ' || md5((g * 11)::text), ((g * 37) % 140)::int),
       jsonb_build_object('sku', 'SKU-' || (g % 50000), 'qty', 1 + g % 9,
                          'tags', jsonb_build_array('t' || g % 13, 't' || g % 29),
                          'gift', g % 10 = 0, 'ref', substr(md5((g * 13)::text), 1, 12))
FROM generate_series(%(start)s::bigint, %(stop)s) g;
"""


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    code: int


def timed(
    argv: list[str] | str,
    env: dict[str, str],
    shell: bool = False,
    stdout: int | None = subprocess.DEVNULL,
) -> Run:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, shell=shell, stdout=stdout, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({proc.returncode}): {err.decode()[-1500:]}")
    return Run(seconds, usage.ru_maxrss, proc.returncode)


def load(server: PostgresServer, database: str, rows: int) -> None:
    server.create_database(database)
    step = 1_000_000
    with server.connect(database) as conn:
        for start in range(1, rows + 1, step):
            stop = min(rows, start + step - 1)
            sql = DATA if start == 1 else DATA.split(");", 1)[1]
            conn.execute(sql.replace("%(start)s", str(start)).replace("%(stop)s", str(stop)))
        conn.execute("CREATE INDEX orders_customer ON orders (customer_id)")
        conn.execute("VACUUM ANALYZE orders")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--smoke", action="store_true", help="tiny data for CI (scale 0.03)")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each ratio's pair back to back N times; report the medians",
    )
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="only the Aegis backup: its time and peak RSS at this scale",
    )
    args = parser.parse_args()
    scale = 0.03 if args.smoke else args.scale
    rows = int(ROWS_PER_SCALE * scale)
    pg = PostgresServer.start()
    moto = MotoServer.start()
    work = Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    try:
        return bench(pg, moto, work, rows, args.skip_restore, args.rss_only, max(1, args.repeat))
    finally:
        pg.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


def bench(
    pg: PostgresServer,
    moto: MotoServer,
    work: Path,
    rows: int,
    skip_restore: bool,
    rss_only: bool,
    repeat: int = 1,
) -> int:
    bin_dir = pg.bin_dir
    s3 = moto.s3_client()
    s3.create_bucket(Bucket=BUCKET)
    keys = work / "keys"
    keys.mkdir()
    (keys / "k1").write_text(os.urandom(32).hex())
    env = {
        **os.environ,
        **moto.aws_env(),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
        "PGHOST": pg.host,
        "PGPORT": str(pg.port),
        "OPENSSL_PASS": os.urandom(16).hex(),
    }
    t0 = time.perf_counter()
    load(pg, "bench", rows)
    with pg.connect("bench") as conn:
        size_row = conn.execute("SELECT pg_database_size('bench')").fetchone()
        db_bytes = int(size_row[0]) if size_row else 0
    print(
        f"loaded {rows} rows in {time.perf_counter() - t0:.0f}s; database {db_bytes / 2**20:.0f} "
        f"MiB",
        flush=True,
    )

    results: dict[str, float] = {}
    pg_dump = str(bin_dir / "pg_dump")
    if rss_only:
        run = timed(
            [
                AEGIS,
                "agent",
                "backup",
                "--source",
                "postgres",
                "--host",
                pg.host,
                "--port",
                str(pg.port),
                "--database",
                "bench",
                "--bucket",
                BUCKET,
                "--namespace",
                "bench",
                "--policy",
                "pg",
                "--point",
                "rss",
                "--keys-dir",
                str(keys),
                "--progress-seconds",
                "30",
            ],
            env,
            stdout=subprocess.PIPE,
        )
        manifest = json.loads(
            s3.get_object(Bucket=BUCKET, Key="bench/pg/rss/manifest.json")["Body"].read()
        )
        print(
            json.dumps(
                {
                    "rows": rows,
                    "logicalMiB": manifest["sizeBytes"] / 2**20,
                    "storedMiB": manifest["storedBytes"] / 2**20,
                    "aegisBackupSeconds": run.seconds,
                    "peakRssMiB": run.max_rss_kib / 1024,
                }
            )
        )
        return 0
    timed([pg_dump, "-Fc", "-Z0", "-d", "bench"], env)  # warm the cache once
    dump_default = work / "default.dump"
    results["pg_dump_fc_file"] = timed(
        [pg_dump, "-Fc", "-d", "bench", "-f", str(dump_default)], env
    ).seconds
    dump_default.unlink()
    pipeline = (
        f"set -o pipefail; {pg_dump} -Fc -Z9 -d bench | openssl enc -aes-256-cbc "
        f"-pbkdf2 -pass env:OPENSSL_PASS | aws s3 cp - s3://{BUCKET}/baseline.enc "
        f"--endpoint-url {moto.endpoint} --only-show-errors"
    )
    results["pipeline_z9_openssl_awscli"] = timed(["bash", "-c", pipeline], env).seconds

    backup_args = [
        AEGIS,
        "agent",
        "backup",
        "--source",
        "postgres",
        "--host",
        pg.host,
        "--port",
        str(pg.port),
        "--database",
        "bench",
        "--bucket",
        BUCKET,
        "--namespace",
        "bench",
        "--policy",
        "pg",
        "--keys-dir",
        str(keys),
        "--progress-seconds",
        "10",
    ]
    # Each ratio's pair runs back to back, `repeat` times; the medians are reported (the box
    # is shared: a pair measured minutes apart would compare different loads).
    runs: dict[str, list[float]] = {}
    ratio_runs: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    dump_z0 = work / "z0.dump"
    if not skip_restore:
        timed([pg_dump, "-Fc", "-Z0", "-d", "bench", "-f", str(dump_z0)], env)
    flags = ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction"]
    for i in range(1, repeat + 1):
        plain = timed([pg_dump, "-Fc", "-Z0", "-d", "bench"], env)
        agent = timed([*backup_args, "--point", f"rp-{i}"], env, stdout=subprocess.PIPE)
        note("pg_dump_z0_devnull", plain.seconds)
        note("aegis_backup", agent.seconds)
        note("aegis_backup_peak_rss_mib", agent.max_rss_kib / 1024)
        ratio_runs.setdefault("backup/pg_dump_Z0_devnull (<=1.20)", []).append(
            agent.seconds / plain.seconds
        )
        if skip_restore:
            continue
        pg.create_database("restore_base")
        local = timed(
            [str(bin_dir / "pg_restore"), *flags, "-d", "restore_base", str(dump_z0)], env
        )
        pg.drop_database("restore_base")
        restore = timed(
            [
                AEGIS,
                "agent",
                "restore",
                "--manifest",
                f"s3://{BUCKET}/bench/pg/rp-{i}",
                "--target",
                "postgres",
                "--host",
                pg.host,
                "--port",
                str(pg.port),
                "--database",
                "restore_aegis",
                "--create-database",
                "--keys-dir",
                str(keys),
                "--progress-seconds",
                "10",
            ],
            env,
            stdout=subprocess.PIPE,
        )
        pg.drop_database("restore_aegis")
        note("pg_restore_local_z0", local.seconds)
        note("aegis_restore", restore.seconds)
        note("aegis_restore_peak_rss_mib", restore.max_rss_kib / 1024)
        ratio_runs.setdefault("restore/pg_restore_local_Z0 (<=1.10)", []).append(
            restore.seconds / local.seconds
        )
    if dump_z0.exists():
        dump_z0.unlink()
    for name, values in runs.items():
        results[name] = statistics.median(values)
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key="bench/pg/rp-1/manifest.json")["Body"].read()
    )
    results["logical_mib"] = manifest["sizeBytes"] / 2**20
    results["stored_mib"] = manifest["storedBytes"] / 2**20
    if not skip_restore:
        verify = timed(
            [AEGIS, "agent", "verify", f"s3://{BUCKET}/bench/pg/rp-1", "--keys-dir", str(keys)],
            env,
            stdout=subprocess.PIPE,
        )
        results["aegis_verify_only"] = verify.seconds

    ratios = {
        "backup/pg_dump_Fc_file (<=0.40)": results["aegis_backup"] / results["pg_dump_fc_file"],
        "backup/Z9|openssl|aws_s3_cp (<=0.25)": results["aegis_backup"]
        / results["pipeline_z9_openssl_awscli"],
    }
    for name, values in ratio_runs.items():
        ratios[name] = statistics.median(values)
    if repeat > 1:
        for name, values in ratio_runs.items():
            print(f"RUNS  {name:40s} " + " ".join(f"{v:6.3f}" for v in values))
    for name, value in results.items():
        print(f"{name:32s} {value:10.2f}")
    for name, value in ratios.items():
        print(f"RATIO {name:40s} {value:6.3f}")
    print(
        json.dumps({"rows": rows, "databaseBytes": db_bytes, "results": results, "ratios": ratios})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
