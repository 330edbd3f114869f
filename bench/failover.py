"""Failover benchmark: the real operator against the API emulator, a real PostgreSQL primary
with a streaming standby under pgbench load, and a moto Route53 zone.

    .venv/bin/python bench/failover.py            # 3 runs, pgbench load
    .venv/bin/python bench/failover.py --smoke    # 1 run, light load (CI size)

Per run, with periodSeconds 1, timeoutSeconds 1 and failureThreshold 3 (issue 7):
- stop → INSYNC: from SIGKILL of the primary's postmaster to the Route53 change being INSYNC.
  The operator's route53 step ends when get_change answers INSYNC, so this is that step's
  completionTime minus the stop time (both wall clock on this machine); the benchmark also
  polls the record itself and reports when it first saw the new value.
- lag at promotion: the standby's replay lag the postgresPromote step measured just before
  pg_promote (status.lastTransition.rpoSeconds / lagBytes), while pgbench was writing.
Targets: stop → INSYNC ≤ 8 s, lag ≤ 1 s.

    .venv/bin/python bench/failover.py --switchover [--runs N]   # failback switchover (issue 13)

Per switchover run: the serving primary under pgbench load with a streaming standby on the
home site (the topology after a failover and a re-attach); the plan fails back with
postgresSwitchover then route53. Reported: the write outage the step recorded (fence →
new primary verified writable), bytes lost, and the transactions pgbench saw committed
(`number of transactions actually processed`) against the rows of pgbench_history on the
new primary (pgbench's tpcb-like transaction inserts one per commit). Target: 0 lost.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
RECORD = "db.example.com."
TARGET_INSYNC, TARGET_LAG = 8.0, 1.0


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def pg_target(server: Any) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "database": "postgres",
            "userSecretRef": {"name": "pg", "key": "user"},
            "passwordSecretRef": {"name": "pg", "key": "password"}}


def plan_spec(primary: Any, standby: Any, moto: Any, zone: str) -> dict[str, Any]:
    def site(name: str, check: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "checks": [{"name": "db", "postgres": check}], "periodSeconds": 1,
                "timeoutSeconds": 1, "failureThreshold": 3, "successThreshold": 1}

    return {
        "mode": "Automatic",
        "primary": site("eu", {**pg_target(primary), "writable": True}),
        "secondary": site("us", pg_target(standby)),
        "steps": [
            {"name": "promote", "timeoutSeconds": 30, "postgresPromote": {
                "target": pg_target(standby), "fencePrimary": pg_target(primary)}},
            {"name": "dns", "timeoutSeconds": 30, "route53": {
                "hostedZoneId": zone, "recordName": RECORD, "type": "A", "ttl": 30,
                "values": ["10.0.0.2"], "endpoint": moto.endpoint,
                "credentialsSecretRef": {"name": "aws"}}},
        ],
    }


def wait(what: str, probe: Any, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def record_values(route53: Any, zone: str) -> list[str]:
    found = route53.list_resource_record_sets(
        HostedZoneId=zone, StartRecordName=RECORD, StartRecordType="A", MaxItems="1")
    return [r["Value"] for rs in found["ResourceRecordSets"] if rs["Name"] == RECORD
            for r in rs.get("ResourceRecords", [])]


def one_run(index: int, api: Any, moto: Any, smoke: bool) -> dict[str, float]:
    from kubernetes import client

    from aegis.sandbox.servers import PostgresServer

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    primary = PostgresServer.start()
    standby = primary.start_standby()
    load: subprocess.Popen[bytes] | None = None
    try:
        env = {**os.environ, "PGPASSWORD": primary.password}
        conn = ["-h", primary.host, "-p", str(primary.port), "-U", primary.user]
        subprocess.run([str(PGBENCH), "-i", "-q", "-s", "1" if smoke else "10", *conn,
                        "postgres"], env=env, check=True, capture_output=True)
        aws = moto.aws_env()
        for name, data in (("pg", {"user": primary.user, "password": primary.password}),
                           ("aws", {k: aws[k] for k in ("AWS_ACCESS_KEY_ID",
                                                        "AWS_SECRET_ACCESS_KEY")})):
            core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        route53 = moto.route53_client()
        zone_id = route53.create_hosted_zone(
            Name="example.com.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
        zone = zone_id.split("/")[-1]
        route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
            "Action": "UPSERT", "ResourceRecordSet": {
                "Name": RECORD, "Type": "A", "TTL": 300,
                "ResourceRecords": [{"Value": "10.0.0.1"}]}}]})
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "failoverplans", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverPlan",
            "metadata": {"name": "bench"}, "spec": plan_spec(primary, standby, moto, zone)})

        def plan_status() -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                      "failoverplans", "bench")
            return dict(obj.get("status") or {})

        wait("both sites healthy", lambda: all(
            (plan_status().get("sites") or {}).get(k, {}).get("healthy") for k in
            ("primary", "secondary")), 60, 0.2)
        clients = "2" if smoke else "8"
        load = subprocess.Popen(
            [str(PGBENCH), "-n", "-c", clients, "-j", "2", "-T", "600", *conn, "postgres"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load_started = time.monotonic()
        time.sleep(1.0 if smoke else 3.0)  # let pgbench reach its steady write rate
        if load.poll() is not None:
            raise RuntimeError("pgbench exited before the primary was stopped")

        with primary.connect() as db:
            row = db.execute(
                "SELECT coalesce(extract(epoch FROM replay_lag), 0), "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication"
            ).fetchone()
        crash_lag_seconds, crash_lag_bytes = (float(row[0]), float(row[1])) if row else (0, 0)
        stopped_wall = dt.datetime.now(dt.UTC)
        stopped = time.monotonic()
        primary.stop_hard()
        load_seconds = stopped - load_started
        wait("the record to flip", lambda: record_values(route53, zone) == ["10.0.0.2"], 60)
        seen_flipped = time.monotonic() - stopped
        status = wait("FailedOver", lambda: (s := plan_status()).get("state") in (
            "FailedOver", "Failed") and s, 60, 0.05)
        last = status["lastTransition"]
        if last["result"] != "Succeeded":
            raise RuntimeError(f"failover failed: {last}")
        steps = {s["name"]: s for s in last["steps"]}
        with standby.connect() as db:
            row = db.execute("SELECT count(*) FROM pgbench_history").fetchone()
        committed = int(row[0]) if row else 0
        change = steps["dns"]["outputs"]["changeId"]
        insync_state = route53.get_change(Id=change)["ChangeInfo"]["Status"]
        insync = (parse_time(steps["dns"]["completionTime"]) - stopped_wall).total_seconds()
        detected = (parse_time(last["detectedTime"]) - stopped_wall).total_seconds()
        started = (parse_time(last["startTime"]) - stopped_wall).total_seconds()
        result = {
            "insync": insync, "seen_flipped": seen_flipped, "detected": detected,
            "started": started, "procedure": float(last["durationSeconds"]),
            "lag_seconds": float(last.get("rpoSeconds") or 0.0),
            "lag_bytes": float(last.get("lagBytes") or 0),
            "tps": committed / load_seconds,
            "crash_lag_seconds": crash_lag_seconds, "crash_lag_bytes": crash_lag_bytes,
            "promote": (parse_time(steps["promote"]["completionTime"])
                        - parse_time(steps["promote"]["startTime"])).total_seconds(),
        }
        print(f"run {index}: stop→INSYNC {insync:.2f}s ({insync_state}; record seen flipped "
              f"after {seen_flipped:.2f}s), first failed probe +{detected:.2f}s, procedure "
              f"started +{started:.2f}s, took {result['procedure']:.2f}s (promote "
              f"{result['promote']:.2f}s); lag at promotion {result['lag_seconds']:.3f}s / "
              f"{int(result['lag_bytes'])} bytes under {result['tps']:.0f} tps (standby "
              f"behind the primary just before the kill: {crash_lag_seconds:.3f}s / "
              f"{int(crash_lag_bytes)} bytes)",
              # KopfRunner captures sys.stdout while the operator runs
              file=sys.__stdout__, flush=True)
        return result
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        standby.stop()
        primary.stop()
        core.delete_namespace(namespace)


def switchover_run(index: int, api: Any, moto: Any, smoke: bool) -> dict[str, float]:
    import re

    from kubernetes import client

    from aegis.sandbox.servers import PostgresServer

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    current = PostgresServer.start()
    home = current.start_standby()
    load: subprocess.Popen[bytes] | None = None
    try:
        env = {**os.environ, "PGPASSWORD": current.password}
        conn = ["-h", current.host, "-p", str(current.port), "-U", current.user]
        subprocess.run([str(PGBENCH), "-i", "-q", "-s", "1" if smoke else "10", *conn,
                        "postgres"], env=env, check=True, capture_output=True)
        aws = moto.aws_env()
        for name, data in (("pg", {"user": current.user, "password": current.password}),
                           ("aws", {k: aws[k] for k in ("AWS_ACCESS_KEY_ID",
                                                        "AWS_SECRET_ACCESS_KEY")})):
            core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        route53 = moto.route53_client()
        zone = route53.create_hosted_zone(
            Name="example.com.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
        zone = zone.split("/")[-1]

        def dns(name: str, value: str) -> dict[str, Any]:
            return {"name": name, "timeoutSeconds": 30, "route53": {
                "hostedZoneId": zone, "recordName": RECORD, "type": "A", "ttl": 30,
                "values": [value], "endpoint": moto.endpoint,
                "credentialsSecretRef": {"name": "aws"}}}

        def site(name: str, server: Any) -> dict[str, Any]:
            return {"name": name, "checks": [{"name": "db", "postgres": pg_target(server)}],
                    "periodSeconds": 1, "timeoutSeconds": 1}

        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "failoverplans", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverPlan",
            "metadata": {"name": "bench"}, "spec": {
                "mode": "Manual", "primary": site("eu", home), "secondary": site("us", current),
                "steps": [dns("dns", "10.0.0.2")],
                "failbackSteps": [
                    {"name": "switchover", "timeoutSeconds": 60, "postgresSwitchover": {
                        "target": pg_target(home), "primary": pg_target(current)}},
                    dns("dns-back", "10.0.0.1")]}})

        def plan_status() -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                      "failoverplans", "bench")
            return dict(obj.get("status") or {})

        def annotate(key: str, value: str) -> None:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "failoverplans",
                                                  "bench", {"metadata": {"annotations": {
                                                      key: value}}})

        wait("sites probed", lambda: (plan_status().get("sites") or {}).get(
            "secondary", {}).get("healthy"), 60, 0.2)
        annotate("dr.aegis.dev/failover", "bench: traffic on us")
        wait("FailedOver", lambda: plan_status().get("state") == "FailedOver", 60, 0.1)
        wait("home standby lag known", lambda: (plan_status().get("sites") or {}).get(
            "primary", {}).get("replication", {}).get("stale") is False, 60, 0.2)
        clients = "2" if smoke else "8"
        load = subprocess.Popen(
            [str(PGBENCH), "-n", "-c", clients, "-j", "2", "-T", "600", *conn, "postgres"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0 if smoke else 3.0)
        if load.poll() is not None:
            raise RuntimeError("pgbench exited before the switchover")
        annotate("dr.aegis.dev/failback", "bench: planned return")
        status = wait("failback settled", lambda: (s := plan_status()).get("state") in (
            "Monitoring", "Failed") and s, 120, 0.05)
        out, _ = load.communicate(timeout=60)  # every client aborts once the primary is fenced
        last = status["lastTransition"]
        if last["result"] != "Succeeded":
            raise RuntimeError(f"switchover failed: {last}")
        found = re.search(rb"number of transactions actually processed: (\d+)", out)
        if found is None:
            raise RuntimeError(f"pgbench printed no count: {out[-500:]!r}")
        committed = int(found.group(1))
        with home.connect() as db:
            row = db.execute("SELECT count(*) FROM pgbench_history").fetchone()
        present = int(row[0]) if row else 0
        result = {"outage": float(last["writeOutageSeconds"]),
                  "lag_bytes": float(last["lagBytes"]), "committed": committed,
                  "present": present, "lost": max(0, committed - present),
                  "procedure": float(last["durationSeconds"])}
        print(f"run {index}: write outage {result['outage']:.3f}s, bytes lost "
              f"{int(result['lag_bytes'])}, pgbench committed {committed}, on the new primary "
              f"{present} (lost {int(result['lost'])}), failback took "
              f"{result['procedure']:.2f}s", file=sys.__stdout__, flush=True)
        return result
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        home.stop()
        current.stop()
        core.delete_namespace(namespace)


def report_switchover(results: list[dict[str, float]]) -> int:
    outage = [r["outage"] for r in results]
    print()
    print(f"switchover runs: {len(results)}")
    print(f"write outage (fence → new primary writable): median {statistics.median(outage):.3f}s,"
          f" max {max(outage):.3f}s")
    lost = sum(r["lost"] for r in results)
    print(f"committed transactions lost: {int(lost)} of {int(sum(r['committed'] for r in results))}"
          f"; bytes lost max {int(max(r['lag_bytes'] for r in results))}")
    ok = lost == 0 and max(r["lag_bytes"] for r in results) == 0
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="one run, light load")
    parser.add_argument("--switchover", action="store_true",
                        help="measure the failback switchover instead of the failover")
    args = parser.parse_args(argv)
    runs = 1 if args.smoke else args.runs

    from kopf.testing import KopfRunner

    from aegis.k8s import client as aegis_client
    from aegis.sandbox.apiserver import ApiServer
    from aegis.sandbox.servers import MotoServer

    work = Path(tempfile.mkdtemp(prefix="aegis-bench-failover-"))
    with ApiServer(crd_dir=ROOT / "crds") as server:
        kubeconfig = server.write_kubeconfig(work / "kubeconfig")
        os.environ.update({"KUBECONFIG": str(kubeconfig), "AEGIS_METRICS_PORT": "0",
                           "AEGIS_HEALTH_PORT": "0", "AEGIS_LOG_FORMAT": "text",
                           "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true"})
        aegis_client.reset()
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        api = client.ApiClient(configuration)
        moto = MotoServer.start()
        results = []
        try:
            with KopfRunner(["run", "--all-namespaces", "--standalone", "-m",
                             "aegis.handlers"], timeout=600) as runner:
                run = switchover_run if args.switchover else one_run
                for index in range(1, runs + 1):
                    results.append(run(index, api, moto, args.smoke))
            if runner.exception is not None:
                raise runner.exception
        finally:
            moto.stop()
    if args.switchover:
        return report_switchover(results)
    insync = [r["insync"] for r in results]
    lag = [r["lag_seconds"] for r in results]
    lag_bytes = [r["lag_bytes"] for r in results]
    print()
    print(f"runs: {len(results)} (periodSeconds 1, failureThreshold 3, pgbench "
          f"{'2 clients, scale 1' if args.smoke else '8 clients, scale 10'})")
    print(f"stop → Route53 INSYNC: median {statistics.median(insync):.2f}s, max "
          f"{max(insync):.2f}s (target ≤ {TARGET_INSYNC:.0f}s)")
    print(f"lag at promotion: median {statistics.median(lag):.3f}s, max {max(lag):.3f}s; "
          f"max {int(max(lag_bytes))} bytes (target ≤ {TARGET_LAG:.0f}s)")
    crash = [r["crash_lag_seconds"] for r in results]
    print(f"replay lag under load just before the kill (pg_stat_replication): median "
          f"{statistics.median(crash):.3f}s, max {max(crash):.3f}s; max "
          f"{int(max(r['crash_lag_bytes'] for r in results))} bytes")
    ok = max(insync) <= TARGET_INSYNC and max(lag) <= TARGET_LAG
    print("targets met" if ok else "TARGET MISSED")
    # The smoke run (CI) proves the benchmark works; a timing target missed on a busy CI
    # machine is reported, not a failure (speed is measured here, not asserted in CI).
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
