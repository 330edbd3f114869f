"""The object store behind the Kubernetes API emulator: the part of kube-apiserver + etcd +
the garbage and namespace controllers that clients can observe.

Every method is synchronous and runs on the server's event loop thread, so each write is atomic
without locks. Stored objects are never mutated after they are stored: a write builds a new dict,
so readers and watch events can share them without copies.
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aegis.sandbox import apiserver_apply as ssa
from aegis.sandbox import apiserver_builtins as builtins
from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_cel import evaluate_rules
from aegis.sandbox.apiserver_errors import ApiError, FieldCause
from aegis.sandbox.apiserver_options import WriteOptions
from aegis.sandbox.apiserver_patch import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    PatchFormatError,
    apply_patch,
)
from aegis.sandbox.apiserver_resources import Registry, ResourceInfo, infos_from_crd
from aegis.sandbox.apiserver_schema import (
    prune_custom_object,
    validate,
    validate_metadata,
)
from aegis.sandbox.apiserver_select import Selector

JsonDict = dict[str, Any]
StorageKey = tuple[str, str]  # (group, plural): all versions of a kind share one storage
ObjectKey = tuple[str, str]  # (namespace or "", name)
FullKey = tuple[StorageKey, str, str]

NAMESPACES: StorageKey = ("", "namespaces")
SERVICE_ACCOUNTS: StorageKey = ("", "serviceaccounts")
EVENTS: StorageKey = ("", "events")
CRDS: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: JsonDict
    old: JsonDict | None


Subscriber = Callable[[WatchEvent], None]


@dataclass(frozen=True)
class DeleteOptions:
    propagation: str = "Background"  # Background | Foreground | Orphan
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False


class Store:
    def __init__(self, registry: Registry, *, history_limit: int = 5000) -> None:
        self.registry = registry
        self.rv = 0
        self._objects: dict[StorageKey, dict[ObjectKey, JsonDict]] = collections.defaultdict(dict)
        self._uids: dict[str, FullKey] = {}
        self._dependents: dict[str, set[FullKey]] = collections.defaultdict(set)
        self._history: dict[StorageKey, collections.deque[WatchEvent]] = {}
        self._compacted: dict[StorageKey, int] = collections.defaultdict(int)
        self._history_limit = history_limit
        self._subscribers: dict[StorageKey, set[Subscriber]] = collections.defaultdict(set)
        for name in DEFAULT_NAMESPACES:
            self.create(self._info(NAMESPACES), None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------ lookups

    def _info(self, key: StorageKey) -> ResourceInfo:
        infos = self.registry.versions_of(*key)
        if not infos:
            raise KeyError(key)
        return infos[0]

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> JsonDict:
        obj = self._objects[info.storage_key].get((namespace or "", name))
        if obj is None:
            raise errors.not_found(info, name)
        return self._as_version(info, obj)

    def exists_uid(self, uid: str) -> bool:
        return uid in self._uids

    def list_objects(
        self,
        info: ResourceInfo,
        namespace: str | None,
        selector: Selector,
        *,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> tuple[list[JsonDict], str, str | None]:
        """Matching objects in key order, the list resourceVersion and a continue token."""
        bucket = self._objects[info.storage_key]
        name = selector.exact_name()
        if name is not None and namespace is not None:
            candidates = [(k, bucket[k]) for k in [(namespace, name)] if k in bucket]
        else:
            candidates = sorted(bucket.items())
        start: ObjectKey | None = None
        if continue_token:
            start = _decode_continue(continue_token)
        items: list[JsonDict] = []
        next_token: str | None = None
        last_key: ObjectKey = ("", "")
        for key, obj in candidates:
            if namespace is not None and key[0] != namespace:
                continue
            if start is not None and key <= start:
                continue
            if not selector.matches(obj):
                continue
            if limit and len(items) >= limit:
                next_token = _encode_continue(last_key)
                break
            items.append(self._as_version(info, obj))
            last_key = key
        return items, str(self.rv), next_token

    def _as_version(self, info: ResourceInfo, obj: JsonDict) -> JsonDict:
        return as_version(info, obj)

    # ------------------------------------------------------------------ watch plumbing

    def subscribe(self, key: StorageKey, subscriber: Subscriber) -> None:
        self._subscribers[key].add(subscriber)

    def unsubscribe(self, key: StorageKey, subscriber: Subscriber) -> None:
        self._subscribers[key].discard(subscriber)

    def events_since(self, key: StorageKey, rv: int) -> list[WatchEvent] | None:
        """Events after `rv`, or None when they were compacted away (the caller answers 410)."""
        if rv < self._compacted[key]:
            return None
        return [event for event in self._history.get(key, ()) if event.rv > rv]

    def snapshot(self, info: ResourceInfo, namespace: str | None) -> list[JsonDict]:
        bucket = self._objects[info.storage_key]
        return [self._as_version(info, obj) for (ns, _), obj in sorted(bucket.items())
                if namespace is None or ns == namespace]

    def _publish(self, key: StorageKey, event: WatchEvent) -> None:
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = collections.deque()
        history.append(event)
        if len(history) > self._history_limit:
            self._compacted[key] = history.popleft().rv
        for subscriber in list(self._subscribers.get(key, ())):
            subscriber(event)

    # ------------------------------------------------------------------ commit primitives

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _commit(self, info: ResourceInfo, new: JsonDict, old: JsonDict | None) -> JsonDict:
        meta = new["metadata"]
        meta["resourceVersion"] = self._next_rv()
        key = info.storage_key
        object_key = (meta.get("namespace", ""), meta["name"])
        self._objects[key][object_key] = new
        full: FullKey = (key, object_key[0], object_key[1])
        self._uids[meta["uid"]] = full
        old_owners = {r.get("uid") for r in (old or {}).get("metadata", {}).get(
            "ownerReferences") or []}
        new_owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            self._dependents[str(uid)].discard(full)
        for uid in new_owners:
            self._dependents[str(uid)].add(full)
        self._publish(key, WatchEvent(self.rv, "ADDED" if old is None else "MODIFIED", new, old))
        return new

    def _remove(self, info: ResourceInfo, obj: JsonDict) -> JsonDict:
        """Remove for good: a DELETED event, then garbage collection of dependents."""
        key = info.storage_key
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        self._objects[key].pop((namespace, name), None)
        full: FullKey = (key, namespace, name)
        self._uids.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or []:
            self._dependents[str(ref.get("uid"))].discard(full)
        final = {**obj, "metadata": {**meta, "resourceVersion": self._next_rv()}}
        self._publish(key, WatchEvent(self.rv, "DELETED", final, obj))
        if key == CRDS:
            self._drop_crd(obj)
        self._collect_garbage(str(meta["uid"]))
        if namespace:
            self._maybe_finish_namespace(namespace)
        return final

    # ------------------------------------------------------------------ create

    def create(self, info: ResourceInfo, namespace: str | None, body: Any,
               options: WriteOptions | None = None) -> JsonDict:
        options = options or WriteOptions()
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if info.is_events_v1:
            core = self._events_v1_in(info, body)
            return self._as_version(info, self.create(self._info(EVENTS), namespace, core,
                                                      options))
        obj = copy.deepcopy(body)
        _check_type_meta(info, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(
                secrets.choice(GENERATE_NAME_ALPHABET) for _ in range(5))
        name = str(meta.get("name") or "")
        if info.namespaced:
            body_ns = meta.get("namespace")
            if namespace is None:
                namespace = body_ns or None
            elif body_ns and body_ns != namespace:
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            if not namespace:
                raise errors.bad_request("the namespace of the object must be set")
            meta["namespace"] = namespace
            self._check_namespace_open(info, namespace, name)
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError",
                           "Internal error occurred: resourceVersion should not be set on "
                           "objects to be created")
        for server_field in ("uid", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "generation", "selfLink",
                             "managedFields"):
            if not (server_field == "managedFields" and options.applied):
                meta.pop(server_field, None)
        if info.has_status:
            obj.pop("status", None)
        # Set before admission, as the real BeforeCreate does: the Job selector names the uid.
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        obj = self._admit(info, obj, old=None, options=options)
        meta = obj["metadata"]
        if (meta.get("namespace", ""), name) in self._objects[info.storage_key]:
            raise errors.already_exists(info, name)
        if info.tracks_generation:
            meta["generation"] = 1
        _initialise_builtin(info, obj)
        if not options.applied:
            ssa.record_update(None, obj, options.field_manager or "kube-apiserver",
                              info.api_version, _list_kinds(info), "")
        if options.dry_run:
            return self._as_version(info, obj)  # as if stored: no resourceVersion, no event
        stored = self._commit(info, obj, None)
        if info.storage_key == CRDS:
            self._register_crd(stored)
        if info.storage_key == NAMESPACES:
            self._create_default_service_account(stored["metadata"]["name"])
        return self._as_version(info, stored)

    def _create_default_service_account(self, namespace: str) -> None:
        """The ServiceAccount controller's `default` account of every namespace (on a real
        cluster it appears a moment after the namespace; here at once)."""
        if (namespace, "default") in self._objects[SERVICE_ACCOUNTS]:
            return
        self.create(self._info(SERVICE_ACCOUNTS), namespace, {"metadata": {"name": "default"}},
                    WriteOptions(field_manager="kube-controller-manager"))

    def _events_v1_in(self, info: ResourceInfo, body: JsonDict) -> JsonDict:
        """An events.k8s.io/v1 body validated as that API does, in the stored core shape."""
        _check_type_meta(info, copy.deepcopy(body))
        causes = builtins.validate_events_v1(body)
        if causes:
            name = str((body.get("metadata") or {}).get("name") or "")
            raise errors.invalid(info, name, causes)
        return builtins.event_from_events_v1(copy.deepcopy(body))

    def _admit_pod(self, pod: JsonDict) -> None:
        """The ServiceAccount admission plugin: a default account, a refusal (403) when the
        named account does not exist, and the projected API token volume."""
        meta, spec = pod["metadata"], pod.get("spec")
        if not isinstance(spec, dict):
            return
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = account
        found = self._objects[SERVICE_ACCOUNTS].get((meta["namespace"], account))
        if found is None:
            info = self._info(("", "pods"))
            raise errors.forbidden(
                info, str(meta.get("name") or ""),
                f'pods "{meta.get("name") or ""}" is forbidden: error looking up service '
                f'account {meta["namespace"]}/{account}: serviceaccount "{account}" not found')
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = found.get("automountServiceAccountToken")
        if automount is not False:
            builtins.service_account_volume(pod)

    def _check_namespace_open(self, info: ResourceInfo, namespace: str, name: str) -> None:
        ns = self._objects[NAMESPACES].get(("", namespace))
        if ns is None:
            raise errors.not_found(self._info(NAMESPACES), namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                info, name,
                f'{info.group_resource} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated")

    def _admit(self, info: ResourceInfo, obj: JsonDict, old: JsonDict | None,
               options: WriteOptions | None = None) -> JsonDict:
        """Prune, default and validate, as the real server does on every create and update."""
        name = str(obj.get("metadata", {}).get("name") or "")
        dropped: list[str] = []
        if info.custom:
            obj = prune_custom_object(obj, info.schema, dropped)
        else:
            dropped = builtins.strip_unknown(info.kind, obj)
            builtins.check_quantities(info.kind, info.version, obj)
        if options is not None:
            options.check_fields(info.kind, info.version, dropped)
        causes: list[FieldCause] = validate_metadata(
            obj["metadata"], namespaced=info.namespaced,
            is_namespace=info.storage_key == NAMESPACES,
            path_segment_name=info.group == "rbac.authorization.k8s.io")
        if info.storage_key == ("batch", "jobs"):
            if old is None:
                causes += builtins.prepare_job_create(obj)
            else:
                causes += builtins.validate_job_update(obj, old)
            causes += builtins.validate_job(obj)
        elif info.storage_key == EVENTS and old is None:
            causes += builtins.validate_core_event(obj)
        elif info.storage_key == ("", "pods"):
            if old is None:
                self._admit_pod(obj)
            causes += builtins.validate_pod_spec(obj.get("spec"), "spec", template=False)
        if info.custom:
            if info.schema is not None:
                body_schema = {**info.schema, "properties": {
                    k: v for k, v in (info.schema.get("properties") or {}).items()
                    if k not in ("metadata", "apiVersion", "kind")}}
                causes += validate(obj, body_schema, old=old, cel=evaluate_rules)
        elif info.storage_key == CRDS:
            causes += _validate_crd(obj)
        elif info.kind == "Secret" and isinstance(obj.get("stringData"), dict):
            # The real server folds write-only stringData into data (base64), winning over
            # data on the same key, and never stores or returns stringData itself.
            string_data = obj.pop("stringData")
            obj["data"] = {**(obj.get("data") or {}), **{
                key: base64.b64encode(str(value).encode()).decode()
                for key, value in string_data.items()}}
        if causes:
            raise errors.invalid(info, name, causes)
        return obj

    # ------------------------------------------------------------------ update / patch

    def replace(
        self, info: ResourceInfo, namespace: str | None, name: str, body: Any,
        subresource: str | None, options: WriteOptions | None = None,
    ) -> JsonDict:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if info.is_events_v1:
            core = self._events_v1_in(info, body)
            return self._as_version(info, self.replace(self._info(EVENTS), namespace, name, core,
                                                       subresource, options))
        current = self._current(info, namespace, name)
        body_meta = body.get("metadata") or {}
        if body_meta.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({body_meta.get('name')}) does "
                                     f"not match the name on the URL ({name})")
        candidate = copy.deepcopy(body)
        candidate.setdefault("metadata", {})
        return self._update(info, current, candidate, subresource, options)

    def patch(
        self, info: ResourceInfo, namespace: str | None, name: str, content_type: str,
        patch: Any, subresource: str | None, options: WriteOptions | None = None,
    ) -> JsonDict:
        if content_type == STRATEGIC_MERGE_PATCH and info.custom:
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml")
        current = self._current(info, namespace, name)
        try:
            candidate = apply_patch(self._as_version(info, current), content_type, patch)
        except PatchFormatError as exc:
            raise errors.bad_request(str(exc)) from exc
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from exc
        candidate = copy.deepcopy(candidate)
        if not isinstance(candidate.get("metadata"), dict):
            candidate["metadata"] = {}
        if info.is_events_v1:
            core = self._events_v1_in(info, candidate)
            return self._as_version(info, self._update(self._info(EVENTS), current, core,
                                                       subresource, options))
        return self._update(info, current, candidate, subresource, options)

    def apply(
        self, info: ResourceInfo, namespace: str | None, name: str, config: Any,
        options: WriteOptions,
    ) -> tuple[JsonDict, bool]:
        """Server-side apply (`application/apply-patch+yaml`): (the object, whether created)."""
        if not isinstance(config, dict):
            raise errors.bad_request("the body of the request must be a YAML or JSON object")
        if info.is_events_v1:
            raise errors.unsupported_media_type(
                "server-side apply through events.k8s.io/v1 is not supported by the Aegis API "
                "emulator; apply the core/v1 Event")
        if not config.get("kind") or not config.get("apiVersion"):
            raise errors.bad_request(f"Object 'Kind' is missing in '{json.dumps(config)}'")
        _check_type_meta(info, copy.deepcopy(config))
        raw_meta = config.get("metadata")
        config_meta: JsonDict = raw_meta if isinstance(raw_meta, dict) else {}
        if config_meta.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({config_meta.get('name')}) does "
                                     f"not match the name on the URL ({name})")
        options.applied = True
        current = self._objects[info.storage_key].get((namespace or "", name))
        view = self._as_version(info, current) if current is not None else None
        merged = ssa.apply(view, config, options.field_manager, info.api_version,
                           _list_kinds(info), force=options.force, has_status=info.has_status)
        merged.setdefault("metadata", {})["name"] = name
        if current is None:
            return self.create(info, namespace, merged, options), True
        return self._update(info, current, merged, None, options), False

    def _current(self, info: ResourceInfo, namespace: str | None, name: str) -> JsonDict:
        obj = self._objects[info.storage_key].get((namespace or "", name))
        if obj is None:
            raise errors.not_found(info, name)
        return obj

    def _update(
        self, info: ResourceInfo, current: JsonDict, candidate: JsonDict,
        subresource: str | None, options: WriteOptions | None = None,
    ) -> JsonDict:
        options = options or WriteOptions()
        name = current["metadata"]["name"]
        wanted_rv = candidate["metadata"].get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(info, name)
        if subresource == "status":
            # /status takes the status and nothing else, not even metadata.
            new = copy.deepcopy(current)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        elif subresource:
            raise errors.page_not_found(f"{info.plural}/{name}/{subresource}")
        else:
            new = candidate
            _check_type_meta(info, new)
            if info.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            new["metadata"] = _merge_server_metadata(current["metadata"], new["metadata"])
        new["apiVersion"] = current.get("apiVersion", info.api_version)
        new["kind"] = info.kind
        new = self._admit(info, new, old=current, options=options)
        if not options.applied:
            ssa.record_update(current, new, options.field_manager or "kube-apiserver",
                              info.api_version, _list_kinds(info), subresource or "")
        if _same(new, current):
            return self._as_version(info, current)  # a no-op write changes nothing, as in etcd
        old_meta = current["metadata"]
        meta = new["metadata"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(info, name, [FieldCause(
                    "metadata.finalizers", "FieldValueForbidden",
                    "Forbidden: no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {json.dumps(sorted(added))}")])
        if info.tracks_generation and _spec_changed(info, current, new):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if options.dry_run:
            return self._as_version(info, new)  # as if stored: same resourceVersion, no event
        stored = self._commit(info, new, current)
        if info.storage_key == CRDS:
            self._register_crd(stored)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._as_version(info, self._remove(info, stored))
        if info.storage_key == NAMESPACES and meta.get("deletionTimestamp"):
            self._maybe_finish_namespace(meta["name"])
        return self._as_version(info, stored)

    # ------------------------------------------------------------------ delete

    def delete(
        self, info: ResourceInfo, namespace: str | None, name: str, options: DeleteOptions
    ) -> tuple[JsonDict, bool]:
        """Delete or mark for deletion; returns (the object, whether it is gone already)."""
        current = self._current(info, namespace, name)
        meta = current["metadata"]
        if options.precondition_uid and options.precondition_uid != meta["uid"]:
            raise ApiError(409, "Conflict",
                           f"Precondition failed: UID in precondition: {options.precondition_uid}"
                           f", UID in object meta: {meta['uid']}")
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise errors.conflict(info, name)
        if options.dry_run:
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                marked = {**current, "metadata": {**meta, "deletionTimestamp": now_rfc3339(),
                                                  "deletionGracePeriodSeconds": 0}}
                return self._as_version(info, marked), False
            return self._as_version(info, current), not meta.get("finalizers")
        if options.propagation == "Orphan":
            self._orphan_dependents(str(meta["uid"]))
        elif options.propagation == "Foreground":
            self._collect_garbage(str(meta["uid"]), owner_gone=True)
        if meta.get("deletionTimestamp"):
            return self._as_version(info, current), False
        if meta.get("finalizers") or info.storage_key == NAMESPACES:
            new = copy.deepcopy(current)
            new_meta = new["metadata"]
            new_meta["deletionTimestamp"] = now_rfc3339()
            new_meta["deletionGracePeriodSeconds"] = 0
            if info.tracks_generation:
                new_meta["generation"] = int(new_meta.get("generation", 1)) + 1
            if info.storage_key == NAMESPACES:
                new.setdefault("status", {})["phase"] = "Terminating"
            stored = self._commit(info, new, current)
            if info.storage_key == NAMESPACES:
                self._purge_namespace(name)
                if ("", name) not in self._objects[NAMESPACES]:
                    return self._as_version(info, stored), True
            return self._as_version(info, stored), False
        return self._as_version(info, self._remove(info, current)), True

    def delete_collection(
        self, info: ResourceInfo, namespace: str | None, selector: Selector,
        options: DeleteOptions,
    ) -> list[JsonDict]:
        items, _, _ = self.list_objects(info, namespace, selector)
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(self.delete(info, meta.get("namespace"), meta["name"], options)[0])
            except ApiError:
                continue  # removed by a cascade of an earlier item
        return deleted

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, namespace, name in sorted(self._dependents.pop(owner_uid, set())):
            obj = self._objects[key].get((namespace, name))
            if obj is None:
                continue
            new = copy.deepcopy(obj)
            refs = [r for r in new["metadata"].get("ownerReferences") or []
                    if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._commit(self._info(key), new, obj)

    def _collect_garbage(self, owner_uid: str, *, owner_gone: bool = True) -> None:
        """Background cascading deletion: dependents whose every owner is gone are deleted."""
        for key, namespace, name in sorted(self._dependents.get(owner_uid, set())):
            obj = self._objects[key].get((namespace, name))
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            others_alive = any(r.get("uid") != owner_uid and self.exists_uid(str(r.get("uid")))
                               for r in refs)
            info = self._info(key)
            if others_alive:
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs
                                                      if r.get("uid") != owner_uid]
                self._commit(info, new, obj)
            elif owner_gone and not obj["metadata"].get("deletionTimestamp"):
                self.delete(info, namespace or None, name, DeleteOptions())
        if not self.exists_uid(owner_uid):
            self._dependents.pop(owner_uid, None)

    # ------------------------------------------------------------------ namespaces

    def _namespaced_buckets(self) -> Iterator[tuple[ResourceInfo, dict[ObjectKey, JsonDict]]]:
        for key, bucket in list(self._objects.items()):
            infos = self.registry.versions_of(*key)
            if infos and infos[0].namespaced:
                yield infos[0], bucket

    def _purge_namespace(self, namespace: str) -> None:
        for info, bucket in self._namespaced_buckets():
            for ns, name in sorted(k for k in bucket if k[0] == namespace):
                obj = bucket.get((ns, name))
                if obj is not None and not obj["metadata"].get("deletionTimestamp"):
                    self.delete(info, ns, name, DeleteOptions())
        self._maybe_finish_namespace(namespace)

    def _maybe_finish_namespace(self, namespace: str) -> None:
        ns = self._objects[NAMESPACES].get(("", namespace))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for _, bucket in self._namespaced_buckets():
            if any(k[0] == namespace for k in bucket):
                return
        if ns["metadata"].get("finalizers"):
            return  # someone else's finalizer still holds the namespace
        self._remove(self._info(NAMESPACES), ns)

    # ------------------------------------------------------------------ CRDs

    def _register_crd(self, crd: JsonDict) -> None:
        spec = crd.get("spec") or {}
        self.registry.remove_crd(str(spec.get("group", "")),
                                 str((spec.get("names") or {}).get("plural", "")))
        for info in infos_from_crd(crd):
            self.registry.add(info)

    def _drop_crd(self, crd: JsonDict) -> None:
        spec = crd.get("spec") or {}
        group = str(spec.get("group", ""))
        plural = str((spec.get("names") or {}).get("plural", ""))
        infos = self.registry.versions_of(group, plural)
        if infos:
            for obj in list(self._objects[infos[0].storage_key].values()):
                self._remove(infos[0], obj)
        self.registry.remove_crd(group, plural)


# ---------------------------------------------------------------------- helpers


def _list_kinds(info: ResourceInfo) -> ssa.ListKinds:
    return ssa.ListKinds(info.custom, info.schema)


def _same(new: JsonDict, old: JsonDict) -> bool:
    """Equal but for the times in managedFields (which alone never make a write)."""
    if new == old:
        return True

    def untimed(obj: JsonDict) -> JsonDict:
        meta = obj.get("metadata") or {}
        entries = [{k: v for k, v in e.items() if k != "time"}
                   for e in meta.get("managedFields") or []]
        return {**obj, "metadata": {**meta, "managedFields": entries}}

    return untimed(new) == untimed(old)


def as_version(info: ResourceInfo, obj: JsonDict) -> JsonDict:
    """A stored object as the API version of `info` shows it."""
    if info.is_events_v1:
        return builtins.event_to_events_v1(obj)
    if obj.get("apiVersion") == info.api_version:
        return obj
    return {**obj, "apiVersion": info.api_version}


def _check_type_meta(info: ResourceInfo, obj: JsonDict) -> None:
    kind = obj.get("kind")
    if kind and kind != info.kind:
        raise errors.bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({info.kind})")
    api_version = obj.get("apiVersion")
    if api_version and api_version.split("/")[0] != info.api_version.split("/")[0] and info.group:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({info.api_version})")
    obj["kind"] = info.kind
    obj["apiVersion"] = info.api_version


def _merge_server_metadata(old: JsonDict, new: JsonDict) -> JsonDict:
    """Fields only the server sets are kept from the stored object whatever the client sends."""
    merged = dict(new)
    for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds", "generation", "resourceVersion"):
        if key in old:
            merged[key] = old[key]
        else:
            merged.pop(key, None)
    return merged


def _spec_changed(info: ResourceInfo, old: JsonDict, new: JsonDict) -> bool:
    ignored = {"metadata", "status"} if info.has_status else {"metadata"}
    keys = (set(old) | set(new)) - ignored
    return any(old.get(key) != new.get(key) for key in keys)


def _initialise_builtin(info: ResourceInfo, obj: JsonDict) -> None:
    """What the real server's create strategies fill in for the built-ins we care about."""
    if info.storage_key == NAMESPACES:
        obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
        obj["status"] = {"phase": "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = (
            obj["metadata"]["name"])
    elif info.storage_key == CRDS:
        names = (obj.get("spec") or {}).get("names") or {}
        stamp = now_rfc3339()
        obj["status"] = {
            "acceptedNames": names,
            "storedVersions": [v.get("name") for v in (obj.get("spec") or {}).get(
                "versions") or [] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": stamp},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": stamp},
            ],
        }


def _validate_crd(obj: JsonDict) -> list[FieldCause]:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    causes = []
    for field, value in (("spec.group", spec.get("group")), ("spec.names.plural",
                         names.get("plural")), ("spec.names.kind", names.get("kind"))):
        if not value:
            causes.append(FieldCause(field, "FieldValueRequired", "Required value"))
    if not spec.get("versions"):
        causes.append(FieldCause("spec.versions", "FieldValueRequired", "Required value"))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if obj["metadata"].get("name") != expected and not causes:
        causes.append(FieldCause("metadata.name", "FieldValueInvalid",
                                 f"Invalid value: {json.dumps(obj['metadata'].get('name'))}: "
                                 f"must be spec.names.plural+\".\"+spec.group"))
    return causes


def _encode_continue(key: ObjectKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_continue(token: str) -> ObjectKey:
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise errors.bad_request(f"invalid continue token: {exc}") from exc
    return (str(namespace), str(name))
