"""Finding PostgreSQL client tools and matching pg_dump's table patterns. Mostly pure."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aegis.agent.errors import AgentError

PG_LIB = Path("/usr/lib/postgresql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Tool:
    path: Path
    major: int
    version: str


def parse_tool_version(text: str) -> tuple[int, str]:
    """`pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)` → (15, "15.10")."""
    match = _VERSION.search(text)
    if not match:
        raise ValueError(f"unrecognized version output: {text.strip()[:80]!r}")
    major = int(match.group(1))
    minor = match.group(2)
    return major, f"{major}.{minor}" if minor is not None else str(major)


def tool_version(path: Path) -> Tool:
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    major, version = parse_tool_version(out.stdout)
    return Tool(path, major, version)


def candidate_paths(tool: str, bin_dir: str | None, lib: Path = PG_LIB) -> list[Path]:
    if bin_dir:
        return [Path(bin_dir) / tool]
    found = sorted(lib.glob(f"*/bin/{tool}")) if lib.is_dir() else []
    on_path = shutil.which(tool)
    if on_path:
        found.append(Path(on_path))
    return found


def pick_tool(tool: str, min_major: int, bin_dir: str | None, lib: Path = PG_LIB) -> Tool:
    """The newest `tool` of major version >= `min_major`, or a clear error."""
    tools: list[Tool] = []
    for path in candidate_paths(tool, bin_dir, lib):
        if path.is_file():
            try:
                tools.append(tool_version(path))
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
    good = [t for t in tools if t.major >= min_major]
    if good:
        return max(good, key=lambda t: t.major)
    have = ", ".join(f"{t.version} ({t.path})" for t in tools) or "none"
    where = f"postgres.binDir {bin_dir}" if bin_dir else f"{lib}/<major>/bin or PATH"
    raise AgentError(
        f"no {tool} for PostgreSQL {min_major} or newer in {where} (found: {have}); use an "
        f"agent image with PostgreSQL {min_major}+ client tools or set postgres.binDir",
        kind="ClientTooOld",
    )


# --- pg_dump name patterns (psql pattern rules, for counting the tables pg_dump dumps) -------


def _pattern_part(part: str) -> str:
    out = []
    in_quotes = False
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == '"':
            if in_quotes and i + 1 < len(part) and part[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            in_quotes = not in_quotes
        elif in_quotes:
            out.append(re.escape(ch))
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch.lower()))
        i += 1
    return "".join(out)


def _split_dots(pattern: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    for ch in pattern:
        if ch == '"':
            in_quotes = not in_quotes
        if ch == "." and not in_quotes:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class NamePattern:
    schema: re.Pattern[str] | None
    name: re.Pattern[str]

    def matches(self, schema: str, name: str) -> bool:
        if self.schema is not None and not self.schema.fullmatch(schema):
            return False
        return bool(self.name.fullmatch(name))


def table_pattern(pattern: str) -> NamePattern:
    """A pg_dump `--table`-style pattern: `[schema.]name` with `*`, `?` and quoting."""
    parts = _split_dots(pattern)
    if len(parts) == 1:
        return NamePattern(None, re.compile(_pattern_part(parts[0])))
    return NamePattern(re.compile(_pattern_part(parts[-2])), re.compile(_pattern_part(parts[-1])))


def schema_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(_pattern_part(pattern))


def dumped_with_data(
    schema: str,
    name: str,
    schemas: list[str] | None,
    exclude_tables: list[str] | None,
    exclude_table_data: list[str] | None,
) -> bool:
    """Whether pg_dump with these options dumps the rows of `schema.name`."""
    if schemas and not any(schema_pattern(p).fullmatch(schema) for p in schemas):
        return False
    for pattern in (exclude_tables or []) + (exclude_table_data or []):
        if table_pattern(pattern).matches(schema, name):
            return False
    return True


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
