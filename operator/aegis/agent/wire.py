"""Wire models shared by the operator's API and the agent: the camelCase pydantic base, the
common field types, and the shapes both sides read and write.

The agent imports nothing of the operator (pyproject.toml's import-linter contracts), so these
live here: `aegis.api` builds its resource models on `WireModel`, the agent its configuration
(`agent/config.py`) and manifest (`agent/manifest.py`). Field docstrings of the shared shapes
become descriptions in the generated CRDs (`aegis crds`): write them for the people who read
`kubectl explain`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Port = Annotated[int, Field(ge=1, le=65535)]
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
"""libpq `sslmode`."""


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields refused (a typo in a spec or
    an agent config is an error, not a silently ignored setting)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class WireRecord(WireModel):
    """A record read back later (a status, a manifest in the bucket, a check outcome): fields
    written by newer versions are ignored, so older readers keep working."""

    model_config = ConfigDict(extra="ignore")


class ServerSideEncryption(WireModel):
    """S3 server-side encryption, on top of Aegis's own client-side encryption."""

    type: Literal["AES256", "aws:kms"]
    """`AES256` (SSE-S3) or `aws:kms` (SSE-KMS)."""
    kms_key_id: str | None = None
    """KMS key id or ARN when `type` is `aws:kms`; absent uses the bucket's default key."""


class ObjectLock(WireModel):
    """S3 Object Lock retention set on every object written. The bucket must have Object Lock."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    """COMPLIANCE cannot be shortened by anyone; GOVERNANCE can, with a special permission."""
    days: Annotated[int, Field(ge=1, le=36500)]
    """Retention period in days from the time of writing."""


class SourceInfo(WireRecord):
    """What was backed up."""

    kind: Literal["Postgres", "Redis", "Command"]
    """Kind of source."""
    database: str | None = None
    """Database name (PostgreSQL; a command source's `database` label)."""
    server_version: str | None = None
    """Server version at backup time."""
    position: str | None = None
    """WAL LSN (PostgreSQL) or replication offset (Redis) of the snapshot."""
    tables: int | None = None
    """Number of tables whose rows were counted (PostgreSQL)."""
    rows: int | None = None
    """Total rows over all tables (PostgreSQL)."""
    keys: int | None = None
    """Number of keys (Redis)."""
