"""Server-side apply and `managedFields` for the Kubernetes API emulator.

A reasonable subset of structured-merge-diff, at the leaf level:

- every write records which manager set which fields: `Update` entries for create, update
  and patch (the manager is `fieldManager`, else the User-Agent up to its first `/`, as the
  real server does), `Apply` entries for `application/apply-patch+yaml`;
- a field is a path of `f:<name>`, `k:{"key":...}` (list elements keyed by their merge key:
  `containers` by name, `ownerReferences` by uid, ..., and CRD lists declared
  `x-kubernetes-list-type: map`) and `v:<value>` (set lists: `finalizers`, `list-type: set`)
  elements; every other list is atomic (one field);
- apply merges the applied configuration into the live object, removes the fields the same
  manager applied before and no longer applies (unless another manager owns them), and
  answers 409 when it would change a field another manager owns, unless `force=true`, which
  takes the field over;
- managedFields sent by clients are ignored (the server keeps its own).

Not emulated: ownership of map keys themselves (`.` entries), per-version conversion of
field sets, the `status` of an apply to the main resource (dropped, as the real server does).
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

from aegis.sandbox.apiserver_errors import ApiError
from aegis.sandbox.apiserver_patch import STRATEGIC_MERGE_KEYS, STRATEGIC_MERGE_PRIMITIVE_LISTS

JsonDict = dict[str, Any]
Path = tuple[str, ...]
Schema = dict[str, Any]

# Metadata the field manager strips before tracking (server-set or identity fields).
STRIPPED_META = frozenset({
    "name", "namespace", "creationTimestamp", "selfLink", "uid", "generation",
    "managedFields", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
})


def manager_from_user_agent(user_agent: str) -> str:
    """The real server's default manager name: the User-Agent up to the first `/`."""
    return (user_agent.split("/")[0] or "unknown")[:128]


# ---------------------------------------------------------------------------- list kinds


class ListKinds:
    """How the lists of one kind merge: keyed (merge key), set, or atomic."""

    def __init__(self, custom: bool, schema: Schema | None) -> None:
        self.custom = custom
        self.schema = schema

    def kind(self, path: Path) -> tuple[str, list[str]]:
        """("map", keys) | ("set", []) | ("atomic", []) for the list at `path`."""
        names = [p[2:] for p in path if p.startswith("f:")]
        if names[:1] == ["metadata"]:
            if names[-1:] == ["finalizers"]:
                return ("set", [])
            if names[-1:] == ["ownerReferences"]:
                return ("map", ["uid"])
            return ("atomic", [])
        if not self.custom:
            name = names[-1] if names else ""
            if name in STRATEGIC_MERGE_PRIMITIVE_LISTS:
                return ("set", [])
            if name in STRATEGIC_MERGE_KEYS:
                return ("map", [STRATEGIC_MERGE_KEYS[name]])
            return ("atomic", [])
        node = self._schema_at(path)
        list_type = (node or {}).get("x-kubernetes-list-type")
        if list_type == "map":
            return ("map", list((node or {}).get("x-kubernetes-list-map-keys") or []))
        if list_type == "set":
            return ("set", [])
        return ("atomic", [])

    def _schema_at(self, path: Path) -> Schema | None:
        node = self.schema
        for element in path:
            if node is None:
                return None
            if element.startswith("f:"):
                props = node.get("properties") or {}
                node = props.get(element[2:]) or (node.get("additionalProperties")
                                                  if isinstance(node.get("additionalProperties"),
                                                                dict) else None)
            else:
                node = node.get("items")
        return node


# ---------------------------------------------------------------------------- field sets


def _key_element(item: JsonDict, keys: list[str]) -> str:
    return "k:" + json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"),
                             sort_keys=True)


def leaves(obj: JsonDict, kinds: ListKinds, *, status: bool) -> set[Path]:
    """The managed fields of an object: leaf paths (status only, or everything but status)."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if (key == "status") != status:
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in STRIPPED_META}
            if not value:
                continue
        _walk(value, (f"f:{key}",), kinds, out)
    return out


def _walk(value: Any, path: Path, kinds: ListKinds, out: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _walk(item, (*path, f"f:{key}"), kinds, out)
        return
    if isinstance(value, list) and value:
        kind, keys = kinds.kind(path)
        if kind == "map" and keys and all(isinstance(i, dict) for i in value):
            for item in value:
                element = (*path, _key_element(item, keys))
                for key, sub in item.items():
                    _walk(sub, (*element, f"f:{key}"), kinds, out)
            return
        if kind == "set":
            for item in value:
                out.add((*path, "v:" + json.dumps(item, separators=(",", ":"))))
            return
    out.add(path)


def value_at(obj: Any, path: Path) -> Any:
    """The value at a field path, or a sentinel `_MISSING`."""
    node = obj
    for element in path:
        if element.startswith("f:"):
            if not isinstance(node, dict) or element[2:] not in node:
                return _MISSING
            node = node[element[2:]]
        elif element.startswith("k:"):
            wanted = json.loads(element[2:])
            if not isinstance(node, list):
                return _MISSING
            node = next((i for i in node if isinstance(i, dict)
                         and all(i.get(k) == v for k, v in wanted.items())), _MISSING)
            if node is _MISSING:
                return _MISSING
        else:  # v:
            wanted = json.loads(element[2:])
            if not isinstance(node, list) or wanted not in node:
                return _MISSING
            node = wanted
    return node


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def to_fields_v1(paths: set[Path]) -> JsonDict:
    tree: JsonDict = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return tree


def from_fields_v1(tree: JsonDict, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, sub in tree.items():
        if element == ".":
            continue
        path = (*prefix, element)
        if isinstance(sub, dict) and any(k != "." for k in sub):
            out |= from_fields_v1(sub, path)
        else:
            out.add(path)
    return out


def render_path(path: Path) -> str:
    """`.spec.containers[name="a"].image`, as structured-merge-diff prints a path."""
    text = ""
    for element in path:
        if element.startswith("f:"):
            text += "." + element[2:]
        elif element.startswith("k:"):
            keys = json.loads(element[2:])
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        else:
            text += f"[={element[2:]}]"
    return text


# ---------------------------------------------------------------------------- managed fields


class Entry:
    """One `managedFields` entry."""

    def __init__(self, raw: JsonDict) -> None:
        self.manager = str(raw.get("manager", ""))
        self.operation = str(raw.get("operation", "Update"))
        self.api_version = str(raw.get("apiVersion", ""))
        self.time = raw.get("time")
        self.subresource = str(raw.get("subresource", ""))
        self.fields = from_fields_v1(raw.get("fieldsV1") or {})

    def identity(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def describe(self) -> str:
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
            if self.time:
                text += f" at {self.time}"
        return text

    def to_api(self) -> JsonDict:
        out: JsonDict = {"manager": self.manager, "operation": self.operation,
                         "apiVersion": self.api_version}
        if self.time:
            out["time"] = self.time
        out["fieldsType"] = "FieldsV1"
        out["fieldsV1"] = to_fields_v1(self.fields)
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entries(obj: JsonDict | None) -> list[Entry]:
    raw = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [Entry(e) for e in raw if isinstance(e, dict)]


def _store(entries: list[Entry]) -> list[JsonDict]:
    return [e.to_api() for e in entries if e.fields]


def record_update(old: JsonDict | None, new: JsonDict, manager: str, api_version: str,
                  kinds: ListKinds, subresource: str) -> None:
    """Ownership after a non-apply write (in place on `new`): the fields it set or changed
    move to `manager`'s Update entry; fields it removed leave every entry."""
    status = subresource == "status"
    before = leaves(old, kinds, status=status) if old is not None else set()
    after = leaves(new, kinds, status=status)
    changed = {p for p in after if p not in before
               or value_at(old, p) != value_at(new, p)}
    removed = before - after
    entries = _entries(old)
    for entry in entries:
        if (entry.subresource == "status") == status:
            entry.fields -= changed | removed
    if changed:
        mine = next((e for e in entries if e.identity() == (manager, "Update", subresource)),
                    None)
        if mine is None:
            mine = Entry({"manager": manager, "operation": "Update", "apiVersion": api_version,
                          "subresource": subresource})
            entries.append(mine)
        mine.fields |= changed
        mine.time = _now()
        mine.api_version = api_version
    new["metadata"]["managedFields"] = _store(entries)
    if not new["metadata"]["managedFields"]:
        del new["metadata"]["managedFields"]


def apply(current: JsonDict | None, config: JsonDict, manager: str, api_version: str,
          kinds: ListKinds, *, force: bool, has_status: bool) -> JsonDict:
    """The object after `manager` applies `config` (managedFields included), or a 409."""
    config = copy.deepcopy(config)
    if has_status:
        config.pop("status", None)
    applied = leaves(config, kinds, status=False)
    entries = _entries(current)
    base: JsonDict = copy.deepcopy(current) if current is not None else {}
    conflicts: list[tuple[Entry, Path]] = []
    for entry in entries:
        if entry.identity() == (manager, "Apply", "") or entry.subresource:
            continue
        for path in sorted(entry.fields & applied):
            if value_at(base, path) != value_at(config, path):
                conflicts.append((entry, path))
    if conflicts and not force:
        raise conflict_error(conflicts)
    mine = next((e for e in entries if e.identity() == (manager, "Apply", "")), None)
    others = set().union(*(e.fields for e in entries if e is not mine and not e.subresource))
    if mine is not None:
        for path in sorted(mine.fields - applied - others, key=len, reverse=True):
            _remove(base, path)
    merged: JsonDict = _merge(base, config, (), kinds)
    for entry, path in conflicts:
        entry.fields.discard(path)
    if mine is None:
        mine = Entry({"manager": manager, "operation": "Apply", "apiVersion": api_version})
        entries.append(mine)
    mine.fields = applied
    mine.time = _now()
    mine.api_version = api_version
    # Fields whose value the apply changed leave Update owners too (they were taken over).
    for entry in entries:
        if entry is not mine and not entry.subresource:
            entry.fields = {p for p in entry.fields
                            if p not in applied or value_at(base, p) == value_at(merged, p)}
    merged.setdefault("metadata", {})["managedFields"] = _store(entries)
    return merged


def conflict_error(conflicts: list[tuple[Entry, Path]]) -> ApiError:
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {e.describe()}",
               "field": render_path(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = (f"Apply failed with 1 conflict: conflict with {entry.describe()}: "
                   f"{render_path(path)}")
    else:
        by_manager: dict[str, list[Path]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(entry.describe(), []).append(path)
        lines: list[str] = []
        for described in sorted(by_manager):
            lines.append(f"conflicts with {described}:")
            lines += [f"- {render_path(p)}" for p in by_manager[described]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})


def _merge(live: Any, config: Any, path: Path, kinds: ListKinds) -> Any:
    if isinstance(live, dict) and isinstance(config, dict):
        out = dict(live)
        for key, value in config.items():
            out[key] = _merge(live.get(key), value, (*path, f"f:{key}"), kinds)
        return out
    if isinstance(live, list) and isinstance(config, list):
        kind, keys = kinds.kind(path)
        if kind == "map" and keys and all(isinstance(i, dict) for i in live + config):
            result = list(live)
            for item in config:
                element = _key_element(item, keys)
                index = next((n for n, cur in enumerate(result)
                              if _key_element(cur, keys) == element), None)
                if index is None:
                    result.append(copy.deepcopy(item))
                else:
                    result[index] = _merge(result[index], item, (*path, element), kinds)
            return result
        if kind == "set":
            return list(live) + [i for i in config if i not in live]
    return copy.deepcopy(config)


def _locate(node: Any, element: str) -> Any:
    """The dict key or list index an element of a path names in `node`, or None."""
    if element.startswith("f:"):
        return element[2:] if isinstance(node, dict) and element[2:] in node else None
    if not isinstance(node, list):
        return None
    wanted = json.loads(element[2:])
    if element.startswith("k:"):
        return next((n for n, i in enumerate(node) if isinstance(i, dict)
                     and all(i.get(k) == v for k, v in wanted.items())), None)
    return node.index(wanted) if wanted in node else None


def _remove(obj: JsonDict, path: Path) -> None:
    """Remove the field at `path`; maps it leaves empty, and keyed list elements it leaves
    with nothing but their keys, go too (nobody owns them any more)."""
    parents: list[tuple[Any, Any, str]] = []
    node: Any = obj
    for element in path:
        key = _locate(node, element)
        if key is None:
            return
        parents.append((node, key, element))
        node = node[key]
    container, key, _ = parents.pop()
    if parents and parents[-1][2].startswith("k:") and key in json.loads(parents[-1][2][2:]):
        # A key field goes with its element, once nothing but keys is left in it.
        if set(container) - set(json.loads(parents[-1][2][2:])):
            return
        parent, index, _ = parents.pop()
        del parent[index]
    else:
        del container[key]
    while parents:
        container, key, element = parents.pop()
        child = container[key]
        if element.startswith("k:"):
            if not (isinstance(child, dict) and set(child) <= set(json.loads(element[2:]))):
                return
        elif not (isinstance(child, dict | list) and not child):
            return
        del container[key]
