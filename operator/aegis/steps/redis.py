"""redisPromote and redisSwitchover: make a Redis replica the master, with the same care as
for PostgreSQL.

Fencing a Redis master means making it refuse writes while it keeps serving reads and
feeding its replicas: `CONFIG SET min-replicas-to-write` beyond any replica count makes
every write fail with NOREPLICAS (immediately, not after a pause), and it is undone by
setting the previous value back. It does not survive a restart of the server: best effort,
as documented.

Positions are replication offsets: the fenced master's master_repl_offset is its final
position, and a replica has everything once its slave_repl_offset reaches it.
"""

from __future__ import annotations

import time

import redis as redis_py

from aegis.api.common import RedisTarget
from aegis.api.failoverplan import RedisPromoteStep, RedisSwitchoverStep
from aegis.probes.base import SecretReader, scrub
from aegis.probes.redis import redis_client
from aegis.reconcilers.failover import LAG_BYTES, LAG_SECONDS, WRITE_OUTAGE
from aegis.steps.base import StepContext, StepResult

FENCE_REPLICAS = 1_000_000
"""min-replicas-to-write of a fenced master: no deployment has that many replicas."""
CATCH_UP_SECONDS = 5.0
CLIENT_TIMEOUT = 2.0
WRITE_CHECK_KEY = "aegis:write-check"


def _where(target: RedisTarget) -> str:
    return f"{target.host}:{target.port}"


def _info(client: redis_py.Redis) -> dict[str, object]:
    return dict(client.info("replication"))


def _offset(info: dict[str, object], key: str) -> int | None:
    value = info.get(key)
    return None if value is None else int(str(value))


def fence_master(client: redis_py.Redis) -> tuple[str, int | None]:
    """(previous min-replicas-to-write, final offset) after fencing."""
    previous = str(client.config_get("min-replicas-to-write").get("min-replicas-to-write", "0"))
    if previous == str(FENCE_REPLICAS):
        previous = "0"  # our own fence from an interrupted attempt, never the user's setting
    client.config_set("min-replicas-to-write", FENCE_REPLICAS)
    return previous, _offset(_info(client), "master_repl_offset")


def unfence_master(client: redis_py.Redis, previous: str) -> None:
    client.config_set("min-replicas-to-write", previous)


def catch_up(replica: redis_py.Redis, final: int, budget: float) -> int | None:
    """Poll until the replica has processed `final`; returns its offset when it stopped."""
    give_up = time.monotonic() + budget
    while True:
        offset = _offset(_info(replica), "slave_repl_offset")
        if offset is not None and offset >= final:
            return offset
        if time.monotonic() >= give_up:
            return offset
        time.sleep(0.05)


def promote_and_verify(replica: redis_py.Redis) -> str | None:
    """REPLICAOF NO ONE, then None when ROLE says master and a write succeeds; else why not."""
    fenced = replica.config_get("min-replicas-to-write").get("min-replicas-to-write")
    if fenced == str(FENCE_REPLICAS):
        # a fence an earlier transition left while this server was the master
        replica.config_set("min-replicas-to-write", 0)
    replica.replicaof("NO", "ONE")
    role: list[object] = list(replica.role())
    first = role[0]
    name = first.decode() if isinstance(first, bytes) else str(first)
    if name != "master":
        return f"ROLE is {name} after REPLICAOF NO ONE"
    replica.set(WRITE_CHECK_KEY, str(time.time()), px=10_000)
    replica.delete(WRITE_CHECK_KEY)
    return None


def _lag_outputs(final: int | None, offset: int | None) -> dict[str, str]:
    if final is None or offset is None:
        return {}
    lag = max(0, final - offset)
    out = {LAG_BYTES: str(lag), "finalOffset": str(final), "replicaOffset": str(offset)}
    if lag == 0:
        out[LAG_SECONDS] = "0.000"
    return out


def run_redis_promote(
    step: RedisPromoteStep, ctx: StepContext, secrets: SecretReader | None
) -> StepResult:
    known: list[str] = []
    outputs: dict[str, str] = {}
    try:
        return _redis_promote(step, ctx, secrets, known, outputs)
    except Exception as exc:  # an executor reports, it never raises
        text = f"redisPromote failed: {type(exc).__name__}: {exc}"
        return StepResult(False, scrub(text, known), outputs)


def _redis_promote(step: RedisPromoteStep, ctx: StepContext, secrets: SecretReader | None,
                   known: list[str], outputs: dict[str, str]) -> StepResult:
    where = _where(step.target)
    replica = redis_client(step.target, secrets, CLIENT_TIMEOUT, known)
    try:
        if _info(replica).get("role") == "master":
            replica.set(WRITE_CHECK_KEY, "1", px=10_000)
            return StepResult(True, f"{where} is already a master: no second promote", outputs)
        final: int | None = None
        if step.fence_primary is not None:
            old = redis_client(step.fence_primary, secrets, CLIENT_TIMEOUT, known)
            try:
                previous, final = fence_master(old)
                outputs["fence"] = (f"fenced {_where(step.fence_primary)}: writes refused "
                                    f"(min-replicas-to-write was {previous})")
            except (redis_py.RedisError, OSError) as exc:
                outputs["fence"] = f"skipped: {_where(step.fence_primary)} unreachable ({exc})"
            finally:
                old.close()
        offset: int | None
        if final is not None:
            offset = catch_up(replica, final, min(CATCH_UP_SECONDS, max(0.0, ctx.remaining() / 2)))
        else:
            offset = _offset(_info(replica), "slave_repl_offset")
        outputs.update(_lag_outputs(final, offset))
        ctx.save_outputs(dict(outputs))
        why = promote_and_verify(replica)
    finally:
        replica.close()
    if why is not None:
        return StepResult(False, f"{where}: {why}", outputs)
    lag = outputs.get(LAG_BYTES, "unknown")
    return StepResult(True, f"promoted {where} (REPLICAOF NO ONE), role master, writable; "
                      f"{lag} bytes behind the old master; {outputs.get('fence', 'no fence')}",
                      outputs)


def run_redis_switchover(
    step: RedisSwitchoverStep, ctx: StepContext, secrets: SecretReader | None
) -> StepResult:
    known: list[str] = []
    outputs: dict[str, str] = {}
    try:
        return _redis_switchover(step, ctx, secrets, known, outputs)
    except Exception as exc:  # an executor reports, it never raises
        text = f"redisSwitchover failed: {type(exc).__name__}: {exc}"
        return StepResult(False, scrub(text, known), outputs)


def _redis_switchover(step: RedisSwitchoverStep, ctx: StepContext, secrets: SecretReader | None,
                      known: list[str], outputs: dict[str, str]) -> StepResult:
    target, source = _where(step.target), _where(step.primary)
    replica = redis_client(step.target, secrets, CLIENT_TIMEOUT, known)
    master = redis_client(step.primary, secrets, CLIENT_TIMEOUT, known)
    try:
        r_info, m_info = _info(replica), _info(master)
        if r_info.get("role") == "master" and "finalOffset" in ctx.prior_outputs:
            replica.set(WRITE_CHECK_KEY, "1", px=10_000)
            return StepResult(True, f"{target} already promoted by an earlier attempt",
                              dict(ctx.prior_outputs))
        why = _redis_preconditions(r_info, m_info, target, source, ctx.max_lag_bytes)
        if why is not None:
            return StepResult(False, f"switchover refused, nothing changed: {why}", outputs)
        fenced_at = time.monotonic()
        previous, final = fence_master(master)
        outputs["fence"] = f"fenced {source} (min-replicas-to-write was {previous})"
        assert final is not None
        offset = catch_up(replica, final, max(0.5, ctx.remaining() - 3.0))
        if offset is None or offset < final:
            unfence_master(master, previous)
            return StepResult(False, (
                f"switchover rolled back: {target} did not reach the fenced master's final "
                f"offset {final} (at {offset}); {source} unfenced"), outputs)
        outputs.update(_lag_outputs(final, offset))
        ctx.save_outputs(dict(outputs))
        why = promote_and_verify(replica)
        if why is not None:
            return StepResult(False, f"{target}: {why}; {source} stays fenced", outputs)
        outage = time.monotonic() - fenced_at
        outputs[WRITE_OUTAGE] = f"{outage:.3f}"
    finally:
        replica.close()
        master.close()
    return StepResult(True, (
        f"switched over to {target}: reached offset {final} (0 bytes lost), role master, "
        f"writable; writes were refused for {outage:.2f}s; {source} stays fenced"), outputs)


def _redis_preconditions(r_info: dict[str, object], m_info: dict[str, object], target: str,
                         source: str, max_lag_bytes: int | None) -> str | None:
    if m_info.get("role") != "master":
        return f"{source} (the current master) is a {m_info.get('role')}"
    if r_info.get("role") != "slave":
        return (f"{target} is a master itself: it has diverged from {source}; make it a "
                f"replica of {source} first (REPLICAOF)")
    if r_info.get("master_link_status") != "up":
        return f"{target}'s link to its master is {r_info.get('master_link_status')}"
    if r_info.get("master_replid") != m_info.get("master_replid"):
        return f"{target} does not replicate from {source} (another replication id)"
    final, offset = _offset(m_info, "master_repl_offset"), _offset(r_info, "slave_repl_offset")
    if final is None or offset is None:
        return "replication offsets unknown"
    if max_lag_bytes is not None and final - offset > max_lag_bytes:
        return f"{target} is {final - offset} bytes behind {source} (maxLagBytes {max_lag_bytes})"
    return None
