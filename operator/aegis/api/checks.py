"""Verification checks run after a restore (Restore.spec.verify, DRDrill.spec.restore.verify)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from aegis.api.common import ApiModel, Argv, StatusModel, cel


class Expectation(ApiModel):
    """What the check's value must satisfy. Several expectations may be combined."""

    min: float | None = None
    """The value must be at least this number."""
    max: float | None = None
    """The value must be at most this number."""
    equals: str | None = None
    """The value, as text, must equal this."""
    matches_backup: bool | None = None
    """Row counts of every table must equal those recorded in the backup's manifest
    (PostgreSQL only; the check needs no `sql`)."""

    @model_validator(mode="after")
    def _some_expectation(self) -> Expectation:
        if all(v is None for v in (self.min, self.max, self.equals, self.matches_backup)):
            raise ValueError("set at least one of min, max, equals, matchesBackup")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class RedisQuery(ApiModel):
    """A read-only Redis query whose result is checked."""

    op: Literal["KeyCount", "KeyExists", "Get", "TTL"]
    """KeyCount (DBSIZE), KeyExists (1 or 0), Get (the value as text) or TTL (seconds)."""
    key: Annotated[str, Field(min_length=1)] | None = None
    """The key for KeyExists, Get and TTL."""

    @model_validator(mode="after")
    def _key_when_needed(self) -> RedisQuery:
        if self.op != "KeyCount" and self.key is None:
            raise ValueError(f"key: op {self.op} needs a key")
        return self


VERIFY_CHECK_RULES = [
    {
        "rule": "(has(self.sql) ? 1 : 0) + (has(self.redis) ? 1 : 0) + "
        "(has(self.command) ? 1 : 0) <= 1",
        "message": "set one of sql, redis or command, not several",
    },
    {
        "rule": "has(self.sql) || has(self.redis) || has(self.command) || "
        "(has(self.expect.matchesBackup) && self.expect.matchesBackup)",
        "message": "set sql, redis or command, or expect.matchesBackup: true",
    },
]


class VerifyCheck(ApiModel):
    """A named check: a SQL query whose first column of the first row is compared, a Redis
    query, or (with `expect.matchesBackup`) a comparison with the backup's own row counts."""

    model_config = ConfigDict(json_schema_extra=cel(*VERIFY_CHECK_RULES))

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9][-_.a-zA-Z0-9]*$")
    ]
    """Name of the check, shown in status."""
    sql: Annotated[str, Field(min_length=1)] | None = None
    """A read-only SQL query, e.g. `SELECT count(*) FROM orders`."""
    redis: RedisQuery | None = None
    """A Redis query."""
    command: Argv | None = None
    """A command (target.command restores only), run with the target's env; its stdout,
    trimmed, is the value; a non-zero exit is an Error. E.g. `[sh, -c, "mariadb -N -e
    'SELECT count(*) FROM shop.orders'"]`."""
    expect: Expectation
    """What the result must satisfy."""

    @model_validator(mode="after")
    def _one_query(self) -> VerifyCheck:
        queries = [q for q in (self.sql, self.redis, self.command) if q is not None]
        if len(queries) > 1:
            raise ValueError(f"check {self.name}: set one of sql, redis or command, not several")
        if not queries and not self.expect.matches_backup:
            raise ValueError(
                f"check {self.name}: set sql, redis or command, or expect.matchesBackup: true"
            )
        return self


class CheckResult(StatusModel):
    """The outcome of one verification check."""

    name: str
    """Name of the check."""
    result: Literal["Passed", "Failed", "Error"]
    """Passed, Failed (the value missed the expectation) or Error (the query failed)."""
    value: str | None = None
    """The observed value, as text."""
    message: str | None = None
    """Why the check failed, or a detail."""
