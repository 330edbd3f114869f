"""postgresPromote: fence the old primary (best effort), measure the standby's replay lag,
promote the standby with pg_promote(), and check that it takes writes.

Order and why:
1. fence first: once the old primary is read-only and its client sessions are closed, no
   write can land there after the lag is measured, so the measured lag is the data-loss
   window; if it is reachable, the standby gets a few seconds to replay up to its final LSN;
2. measure: bytes = WAL received but not replayed, and (primary reachable) the primary's
   final LSN minus the standby's replay LSN; seconds = now() - pg_last_xact_replay_timestamp(),
   but 0 when everything known has been replayed (on an idle primary the timestamp ages
   without any data being missing). WAL the dead primary never sent is unknowable: that is
   the honest limit of the figure;
3. promote: `pg_promote(wait => true)` bounded by the step's deadline;
4. verify on a fresh connection: not in recovery, not read-only, and a write succeeds.

Idempotent: a standby that is already out of recovery is not promoted again (success, the
lag measured by the first attempt is kept). Fencing twice is harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from aegis.api.failoverplan import PostgresPromoteStep, PostgresSwitchoverStep
from aegis.probes.base import SecretReader, scrub
from aegis.probes.postgres import PgEndpoint, in_recovery, pg_connect
from aegis.reconcilers.failover import LAG_BYTES, LAG_SECONDS, WRITE_OUTAGE
from aegis.steps.base import StepContext, StepResult

FENCE_TIMEOUT_SECONDS = 2.0
CATCH_UP_SECONDS = 5.0

Conn = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class FenceResult:
    fenced: bool
    message: str
    final_lsn: str | None = None
    """pg_current_wal_lsn() of the fenced primary: no write can come after it."""


def fence_primary(endpoint: PgEndpoint, timeout: float) -> FenceResult:
    """Make the old primary refuse writes if it is reachable: default_transaction_read_only
    = on (ALTER SYSTEM, so it survives a restart), reload, and end its client sessions (their
    open transactions could still commit). Never raises."""
    try:
        conn = pg_connect(endpoint, timeout)
    except psycopg.Error as exc:
        return FenceResult(False, f"skipped: {endpoint.where} unreachable ({_first_line(exc)})")
    try:
        with conn:
            if in_recovery(conn):
                return FenceResult(False, f"skipped: {endpoint.where} is a standby")
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
            ended = int(str(row[0])) if row else 0
            lsn_row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            lsn = str(lsn_row[0]) if lsn_row else None
        return FenceResult(
            True, f"fenced {endpoint.where}: read-only, {ended} client sessions ended", lsn
        )
    except psycopg.Error as exc:
        return FenceResult(False, f"fence of {endpoint.where} failed: {_first_line(exc)}")


@dataclass(frozen=True)
class Lag:
    bytes: int | None
    seconds: float | None
    receive_lsn: str | None
    replay_lsn: str | None
    primary_lsn: str | None

    def outputs(self) -> dict[str, str]:
        out = {
            "receiveLsn": self.receive_lsn, "replayLsn": self.replay_lsn,
            "primaryLsn": self.primary_lsn,
            LAG_BYTES: None if self.bytes is None else str(self.bytes),
            LAG_SECONDS: None if self.seconds is None else f"{self.seconds:.3f}",
        }
        return {k: v for k, v in out.items() if v is not None}


def measure_lag(standby: Conn, primary_lsn: str | None) -> Lag:
    """The standby's replay lag now (see the module docstring for the rules)."""
    row = standby.execute(
        "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
        " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),"
        " extract(epoch FROM now() - pg_last_xact_replay_timestamp()),"
        " CASE WHEN %(p)s::pg_lsn IS NULL THEN NULL"
        "  ELSE pg_wal_lsn_diff(%(p)s::pg_lsn, pg_last_wal_replay_lsn()) END",
        {"p": primary_lsn},
    ).fetchone()
    assert row is not None
    receive, replay, received_unreplayed, age, behind_primary = row
    gaps = [max(0, int(str(g))) for g in (received_unreplayed, behind_primary) if g is not None]
    lag_bytes = max(gaps) if gaps else None
    if lag_bytes == 0:
        seconds: float | None = 0.0
    else:
        seconds = None if age is None else max(0.0, float(str(age)))
    return Lag(lag_bytes, seconds, _opt(receive), _opt(replay), primary_lsn)


def catch_up(standby: Conn, primary_lsn: str, budget: float) -> bool:
    """Wait (polling the standby's replay position) until it has replayed `primary_lsn`."""
    give_up = time.monotonic() + budget
    while True:
        row = standby.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (primary_lsn,)
        ).fetchone()
        if row and row[0]:
            return True
        if time.monotonic() >= give_up:
            return False
        time.sleep(0.05)


def verify_writable(endpoint: PgEndpoint, timeout: float) -> str | None:
    """None when a new session on `endpoint` can write; else why not."""
    with pg_connect(endpoint, timeout) as conn:
        if in_recovery(conn):
            return "still in recovery"
        row = conn.execute("SHOW transaction_read_only").fetchone()
        if row and row[0] == "on":
            return "sessions are read-only (default_transaction_read_only = on)"
        conn.execute("CREATE TEMP TABLE aegis_write_check (id int)")
        conn.execute("INSERT INTO aegis_write_check VALUES (1)")
        conn.execute("DROP TABLE aegis_write_check")
    return None


def unfence(conn: Conn) -> bool:
    """Undo a fence an earlier failover left on this server (it was the old primary then)."""
    row = conn.execute("SHOW default_transaction_read_only").fetchone()
    if not row or row[0] != "on":
        return False
    conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    conn.execute("SELECT pg_reload_conf()")
    return True


def run_postgres_promote(
    step: PostgresPromoteStep, ctx: StepContext, secrets: SecretReader | None
) -> StepResult:
    if secrets is None:
        return StepResult(False, "postgresPromote: no Secret reader to resolve credentials")
    known: list[str] = []
    outputs: dict[str, str] = {}
    try:
        standby = PgEndpoint.resolve(step.target, secrets)
        known.append(standby.password)
        old = PgEndpoint.resolve(step.fence_primary, secrets) if step.fence_primary else None
        if old is not None:
            known.append(old.password)
        return _promote(standby, old, ctx, outputs)
    except Exception as exc:  # an executor reports, it never raises
        text = f"postgresPromote failed: {type(exc).__name__}: {_first_line(exc)}"
        return StepResult(False, scrub(text, known), outputs)


def _promote(
    standby: PgEndpoint, old: PgEndpoint | None, ctx: StepContext, outputs: dict[str, str]
) -> StepResult:
    fence: FenceResult | None = None
    if old is not None:
        fence = fence_primary(old, min(FENCE_TIMEOUT_SECONDS, max(0.1, ctx.remaining())))
        outputs["fence"] = fence.message
    with pg_connect(standby, max(0.1, ctx.remaining())) as conn:
        if not in_recovery(conn):
            why = verify_writable(standby, max(0.1, ctx.remaining()))
            note = "; ".join(filter(None, [fence.message if fence else None]))
            if why is not None:
                return StepResult(False, f"{standby.where} is promoted but {why}", outputs)
            return StepResult(
                True, f"{standby.where} already promoted (not in recovery): no second promote"
                + (f"; {note}" if note else ""), outputs,
            )
        caught_up = None
        if fence is not None and fence.final_lsn is not None:
            budget = min(CATCH_UP_SECONDS, max(0.0, ctx.remaining() / 2))
            caught_up = catch_up(conn, fence.final_lsn, budget)
        lag = measure_lag(conn, fence.final_lsn if fence else None)
        outputs.update(lag.outputs())
        ctx.save_outputs(dict(outputs))  # the RPO figure survives a crash during the promote
        wait = max(1, int(ctx.remaining()))
        row = conn.execute(
            "SELECT pg_promote(wait => true, wait_seconds => %s)", (wait,)
        ).fetchone()
        if not (row and row[0]):
            return StepResult(False, f"{standby.where}: pg_promote did not finish within {wait}s",
                              outputs)
        unfenced = unfence(conn)
    why = verify_writable(standby, max(0.1, ctx.remaining()))
    if why is not None:
        return StepResult(False, f"{standby.where} promoted but {why}", outputs)
    parts = [f"promoted {standby.where}, writable",
             f"lag {_show(lag.bytes)} bytes / {_show(lag.seconds)} s before promotion"]
    if caught_up is False:
        parts.append("standby had not replayed the fenced primary's last WAL in time")
    if unfenced:
        parts.append("reset default_transaction_read_only left by an earlier fence")
    if fence is not None:
        parts.append(fence.message)
    return StepResult(True, "; ".join(parts), outputs)


# --------------------------------------------------------------------------- switchover


def _timeline(conn: Conn) -> int:
    row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return int(str(row[0])[:8], 16)


def switchover_preconditions(standby: Conn, primary: Conn, where: str, source: str,
                             max_lag_bytes: int | None) -> tuple[str | None, str]:
    """(why not, what was checked). The standby must be in recovery, its WAL receiver
    streaming on the primary's current timeline, and no more than `max_lag_bytes` behind.
    A fenced or diverged server (not in recovery) fails the first check."""
    if in_recovery(primary):
        return f"{source} (the current primary) is itself in recovery", ""
    row = standby.execute(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on',"
        " (SELECT status FROM pg_stat_wal_receiver LIMIT 1),"
        " (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1),"
        " pg_last_wal_receive_lsn()::text"
    ).fetchone()
    assert row is not None
    recovering, read_only, receiver, tli, received = row
    if not recovering:
        if read_only:
            return (f"{where} is a read-only (fenced) primary, not a standby of {source}: "
                    "re-attach it as a standby first (pg_rewind, CloudNativePG, Patroni)"), ""
        return (f"{where} is a writable primary: it has diverged from {source} (two "
                "primaries); re-attach it as a standby of the current primary first"), ""
    if receiver != "streaming":
        return f"{where} is a standby but its WAL receiver is {receiver or 'not running'}", ""
    timeline = _timeline(primary)
    if tli is not None and int(str(tli)) != timeline:
        return (f"{where} streams timeline {tli} but {source} writes timeline {timeline}: "
                "diverged"), ""
    lag_row = primary.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (received,)
    ).fetchone()
    lag = max(0, int(float(str(lag_row[0])))) if lag_row and lag_row[0] is not None else None
    checked = (f"{where} in recovery, streaming timeline {timeline} from {source}, "
               f"{_show(lag)} bytes behind")
    if lag is None:
        return f"{where}: received position unknown", checked
    if max_lag_bytes is not None and lag > max_lag_bytes:
        return (f"{where} is {lag} bytes behind {source} (maxLagBytes {max_lag_bytes}): "
                "let it catch up first"), checked
    return None, checked


def unfence_endpoint(endpoint: PgEndpoint, timeout: float) -> str:
    """Roll a fence back: writes are taken again. Never raises."""
    try:
        with pg_connect(endpoint, timeout) as conn:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")
        return f"{endpoint.where} unfenced"
    except psycopg.Error as exc:
        return f"unfence of {endpoint.where} FAILED: {_first_line(exc)}"


def run_postgres_switchover(
    step: PostgresSwitchoverStep, ctx: StepContext, secrets: SecretReader | None
) -> StepResult:
    """See PostgresSwitchoverStep. Refuses before any change when a precondition fails;
    after the fence, a catch-up that does not finish rolls the fence back."""
    if secrets is None:
        return StepResult(False, "postgresSwitchover: no Secret reader to resolve credentials")
    known: list[str] = []
    outputs: dict[str, str] = {}
    try:
        standby = PgEndpoint.resolve(step.target, secrets)
        known.append(standby.password)
        primary = PgEndpoint.resolve(step.primary, secrets)
        known.append(primary.password)
        result = _switchover(standby, primary, ctx, outputs)
        return StepResult(result.ok, scrub(result.message, known), result.outputs)
    except Exception as exc:  # an executor reports, it never raises
        text = f"postgresSwitchover failed: {type(exc).__name__}: {_first_line(exc)}"
        return StepResult(False, scrub(text, known), outputs)


def _switchover(
    standby: PgEndpoint, primary: PgEndpoint, ctx: StepContext, outputs: dict[str, str]
) -> StepResult:
    timeout = max(0.1, min(FENCE_TIMEOUT_SECONDS * 2, ctx.remaining()))
    final_lsn = ctx.prior_outputs.get("finalLsn")
    if final_lsn and _still_fenced(primary, timeout):
        # resumed after the fence (the operator stopped mid-step): the preconditions were
        # passed then and the primary still refuses writes, so its final LSN still holds
        outputs.update(ctx.prior_outputs)
        with pg_connect(standby, timeout) as conn:
            if not in_recovery(conn):
                why = verify_writable(standby, timeout)
                if why is None:
                    return StepResult(True, f"{standby.where} already promoted by an earlier "
                                      "attempt", outputs)
        return _promote_caught_up(standby, primary, ctx, outputs, final_lsn, time.monotonic())
    with pg_connect(standby, timeout) as s_conn, pg_connect(primary, timeout) as p_conn:
        why, checked = switchover_preconditions(s_conn, p_conn, standby.where, primary.where,
                                                ctx.max_lag_bytes)
    if why is not None:
        return StepResult(False, f"switchover refused, nothing changed: {why}", outputs)
    outputs["preconditions"] = checked
    fenced_at = time.monotonic()
    fence = fence_primary(primary, timeout)
    if not fence.fenced or fence.final_lsn is None:
        undo = unfence_endpoint(primary, timeout)
        return StepResult(False, f"switchover refused: {fence.message}; {undo}", outputs)
    outputs["fence"] = fence.message
    outputs["finalLsn"] = fence.final_lsn
    ctx.save_outputs(dict(outputs))
    return _promote_caught_up(standby, primary, ctx, outputs, fence.final_lsn, fenced_at)


def _still_fenced(primary: PgEndpoint, timeout: float) -> bool:
    """Whether an earlier attempt's fence still holds. A primary that cannot be reached
    keeps its fence (ALTER SYSTEM survives restarts); one that takes writes again (the fence
    was rolled back or undone by hand) may have written past the recorded final LSN."""
    try:
        with pg_connect(primary, timeout) as conn:
            row = conn.execute("SHOW default_transaction_read_only").fetchone()
            return bool(row and row[0] == "on")
    except psycopg.OperationalError:
        return True


def _promote_caught_up(
    standby: PgEndpoint, primary: PgEndpoint, ctx: StepContext, outputs: dict[str, str],
    final_lsn: str, fenced_at: float,
) -> StepResult:
    with pg_connect(standby, max(0.1, ctx.remaining())) as conn:
        # keep a few seconds of the step for promote and verify
        budget = max(0.5, ctx.remaining() - 5.0)
        if not catch_up(conn, final_lsn, budget):
            lag = measure_lag(conn, final_lsn)
            undo = unfence_endpoint(primary, FENCE_TIMEOUT_SECONDS)
            outputs["rolledBack"] = undo
            outputs["finalLsn"] = ""  # void: a retry must check and fence again
            return StepResult(False, (
                f"switchover rolled back: {standby.where} did not replay up to the fenced "
                f"primary's final position {final_lsn} within {budget:.1f}s "
                f"({_show(lag.bytes)} bytes short); {undo}"), outputs)
        lag = measure_lag(conn, final_lsn)
        outputs.update(lag.outputs())
        ctx.save_outputs(dict(outputs))
        wait = max(1, int(ctx.remaining()))
        row = conn.execute(
            "SELECT pg_promote(wait => true, wait_seconds => %s)", (wait,)
        ).fetchone()
        if not (row and row[0]):
            return StepResult(False, f"{standby.where}: pg_promote did not finish within "
                              f"{wait}s; {primary.where} stays fenced", outputs)
        unfence(conn)
    why = verify_writable(standby, max(0.1, ctx.remaining()))
    if why is not None:
        return StepResult(False, f"{standby.where} promoted but {why}", outputs)
    outage = time.monotonic() - fenced_at
    outputs[WRITE_OUTAGE] = f"{outage:.3f}"
    return StepResult(True, (
        f"switched over to {standby.where}: replayed up to {final_lsn} ({_show(lag.bytes)} "
        f"bytes lost), writable; writes were refused for {outage:.2f}s; {primary.where} stays "
        "fenced"), outputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _show(value: float | int | None) -> str:
    return "unknown" if value is None else str(value)
