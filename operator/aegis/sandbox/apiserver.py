"""A Kubernetes API emulator on 127.0.0.1 that kopf, the official client and kubectl accept.

Built on kmock 0.8 (pinned): `KubeApiHandler` is a `kmock.RawHandler`, so every request is
parsed into a `kmock.Request` and a test can still inject reactions with kmock's DSL
(`server.handler['get /api/v1/namespaces'] << 500`) in front of the emulated behaviour. The
stateful part of kmock (`KubernetesEmulator`) is not used: it is "a database over HTTP" (no
resourceVersion, uid, 201, PUT, selectors, garbage collection, status subresource, ...), its URL
parser fails on `GET /api/v1/namespaces`, and its `Server` patches aiohttp's resolver
process-wide. The Kubernetes semantics live in `apiserver_store` (objects, watches, GC,
namespaces), `apiserver_schema` + `apiserver_cel` (CRD validation), `apiserver_patch`,
`apiserver_select`, `apiserver_table` and `apiserver_scale`; who may do what in
`apiserver_access` (`apiserver_auth`: tokens and certificates, `apiserver_rbac`: RBAC and the
usage record) over https (`apiserver_tls`). See docs/emulator.md.

Run standalone: `python -m aegis.sandbox.apiserver --port 0 --crds crds/` prints the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp.web
import kmock
import yaml

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_access import AccessControl
from aegis.sandbox.apiserver_auth import ADMIN_USER, MASTERS, Identity
from aegis.sandbox.apiserver_errors import ApiError
from aegis.sandbox.apiserver_options import WriteOptions, parse_write_options
from aegis.sandbox.apiserver_patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
)
from aegis.sandbox.apiserver_rbac import Access
from aegis.sandbox.apiserver_resources import Registry, ResourceInfo
from aegis.sandbox.apiserver_scale import serve_scale
from aegis.sandbox.apiserver_select import (
    Selector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from aegis.sandbox.apiserver_store import DeleteOptions, Store, WatchEvent, as_version
from aegis.sandbox.apiserver_table import build_table
from aegis.sandbox.apiserver_tls import (
    CertificateAuthority,
    ServingCertificate,
    make_serving_certificate,
    server_context,
)

JsonDict = dict[str, Any]
log = logging.getLogger("aegis.sandbox.apiserver")

SERVER_VERSION: JsonDict = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-aegis-emulator",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
    "platform": "linux/amd64",
}
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True)
class ApiPath:
    """`/api/v1/...` or `/apis/<group>/<version>/...` split into its parts."""

    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ApiPath | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if (len(rest) >= 3 and rest[0] == "namespaces"
            and not (len(rest) == 3 and rest[2] in NAMESPACE_SUBRESOURCES and group == "")):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    padded = [*rest, None, None, None]
    return ApiPath(group, version, padded[0], namespace, padded[1], padded[2])


def _json_response(body: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(body, separators=(",", ":")).encode(),
                                status=status, content_type="application/json")


def _error_response(error: ApiError) -> aiohttp.web.Response:
    return _json_response(error.to_status(), error.code)


def _wants_table(request: kmock.Request) -> str | None:
    """The Table version kubectl asks for (`as=Table;v=v1;g=meta.k8s.io`), if any."""
    accept = request.headers.get("Accept", "")
    for option in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in
                  (p.partition("=") for p in option.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v", "v1")
    return None


def _selector(request: kmock.Request, info: ResourceInfo) -> Selector:
    try:
        return Selector(
            labels=parse_label_selector(request.params.get("labelSelector")),
            fields=parse_field_selector(request.params.get("fieldSelector"),
                                            (info.group, info.plural)),
        )
    except SelectorError as exc:
        raise errors.bad_request(str(exc)) from exc


def _warned(response: aiohttp.web.Response, options: WriteOptions) -> aiohttp.web.Response:
    """One `Warning` header per unknown/duplicate field, as the real server sends them."""
    for value in options.warning_headers():
        response.headers.add("Warning", value)
    return response


def _delete_options(request: kmock.Request, dry_run: bool = False) -> DeleteOptions:
    body = request.data if isinstance(request.data, dict) else {}
    preconditions = body.get("preconditions") or {}
    propagation = (request.params.get("propagationPolicy") or body.get("propagationPolicy")
                   or ("Orphan" if body.get("orphanDependents") is True else "Background"))
    if propagation not in ("Background", "Foreground", "Orphan"):
        raise errors.bad_request(f"propagationPolicy: Unsupported value: {propagation!r}")
    return DeleteOptions(propagation=propagation,
                         precondition_uid=preconditions.get("uid"),
                         precondition_rv=preconditions.get("resourceVersion"), dry_run=dry_run)


class KubeApiHandler(kmock.RawHandler):
    """kmock's request handling with Kubernetes API semantics behind it."""

    def __init__(self, crd_dir: Path | None = None, *, record_requests: bool = False,
                 bookmark_interval: float = 5.0, admin_token: str | None = None) -> None:
        super().__init__()
        self.registry = Registry()
        self.store = Store(self.registry)
        # Authentication, RBAC and the per-identity usage record (apiserver_access).
        self.access = AccessControl(self.registry, self.store, admin_token=admin_token)
        self.record_requests = record_requests
        self.bookmark_interval = bookmark_interval
        self.server_address = "127.0.0.1:0"
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        # Every unknown/duplicate field a write lost (Warn or Ignore): a real server drops them
        # too, so a test can assert that nothing Aegis writes is silently pruned.
        self.dropped_fields: list[str] = []
        if crd_dir is not None:
            for crd in load_crds(crd_dir):
                self.store.create(self._info_or_404("apiextensions.k8s.io", "v1",
                                                    "customresourcedefinitions"), None, crd)

    # ------------------------------------------------------------------ entry point

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        api_path = parse_api_path(raw.path)
        resource = None
        if api_path is not None and api_path.plural:
            resource = kmock.resource(api_path.group, api_path.version, api_path.plural)
        request = kmock.Request(
            id=len(self._requests), method=raw.method, url=raw.url, params=dict(raw.query),
            headers=dict(raw.headers), cookies=dict(raw.cookies), body=body,
            text=body.decode("utf-8", "replace"), data=data, resource=resource,
            namespace=api_path.namespace if api_path else None,
            name=api_path.name if api_path else None,
            subresource=api_path.subresource if api_path else None, raw_request=raw,
        )
        if self.record_requests:
            self._requests.append(request)
        try:
            identity = self._admit(raw, api_path)
        except ApiError as error:
            return _error_response(error)
        if self._payloads:  # reactions injected by a test take precedence, as in kmock
            with contextlib.suppress(NotImplementedError):
                response: aiohttp.web.StreamResponse = await kmock.RawHandler._handle(
                    self, request)
                return response
        try:
            if api_path is not None and api_path.subresource == "token" \
                    and api_path.plural == "serviceaccounts" and api_path.group == "":
                return _json_response(self.access.token_request(
                    raw.method, api_path.namespace or "", api_path.name or "",
                    body if "protobuf" in raw.content_type else data, raw.content_type), 201)
            review = self.access.serve(raw.method, raw.path.rstrip("/"), identity, body, data,
                                       raw.content_type)
            if review is not None:
                return _json_response(review, 201)
            return await self._serve(request, raw, api_path)
        except ApiError as error:
            return _error_response(error)
        except Exception as exc:  # the real server answers 500 and keeps serving
            log.exception("emulator failure on %s %s", raw.method, raw.path_qs)
            return _error_response(ApiError(500, "InternalError",
                                            f"Internal error occurred: {exc!r}"))

    def _admit(self, raw: aiohttp.web.BaseRequest, api_path: ApiPath | None) -> Identity:
        """Who asks, and may they (401/403 otherwise); recorded in `access.usage`."""
        resource = api_path is not None and api_path.plural is not None
        peercert = raw.transport.get_extra_info("peercert") if raw.transport else None
        identity, _ = self.access.admit(
            raw.method, raw.path, raw.query, raw.headers, peercert,
            group=api_path.group if resource and api_path else None,
            plural=api_path.plural if api_path else None,
            namespace=api_path.namespace if api_path else None,
            name=api_path.name if api_path else None,
            subresource=api_path.subresource if api_path else None)
        return identity

    async def _serve(self, request: kmock.Request, raw: aiohttp.web.BaseRequest,
                     api_path: ApiPath | None) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if raw.method == "GET":
            static = self._static(path)
            if static is not None:
                return _json_response(static)
            if path in ("/healthz", "/livez", "/readyz"):
                return aiohttp.web.Response(text="ok")
        if api_path is None:
            raise errors.page_not_found(raw.path)
        if api_path.plural is None:
            if raw.method != "GET":
                raise errors.method_not_allowed(f"{raw.method} is not allowed on discovery")
            doc = self.registry.resource_list(api_path.group, api_path.version)
            if doc is None:
                raise errors.page_not_found(raw.path)
            return _json_response(doc)
        info = self._info_or_404(api_path.group, api_path.version, api_path.plural)
        if api_path.namespace is not None and not info.namespaced:
            raise errors.page_not_found(raw.path)
        return await self._serve_resource(request, raw, api_path, info)

    def _static(self, path: str) -> JsonDict | None:
        if path == "/version":
            return SERVER_VERSION
        if path == "/api":
            return self.registry.api_versions(self.server_address)
        if path == "/apis":
            return self.registry.api_group_list()
        if path.startswith("/apis/") and path.count("/") == 2:
            doc = self.registry.api_group(path.split("/")[2])
            if doc is None:
                raise errors.page_not_found(path)
            return doc
        if path == "/":
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]
            for group, versions in self.registry.group_versions().items():
                if group:
                    paths += [f"/apis/{group}"] + [f"/apis/{group}/{v}" for v in versions]
            return {"paths": sorted(set(paths))}
        return None

    def _info_or_404(self, group: str, version: str, plural: str) -> ResourceInfo:
        info = self.registry.get(group, version, plural)
        if info is None:
            raise errors.page_not_found(f"/{group}/{version}/{plural}")
        return info

    # ------------------------------------------------------------------ resources

    async def _serve_resource(self, request: kmock.Request, raw: aiohttp.web.BaseRequest,
                              api_path: ApiPath, info: ResourceInfo,
                              ) -> aiohttp.web.StreamResponse:
        method, name, namespace = raw.method, api_path.name, api_path.namespace
        if info.namespaced and name is not None and namespace is None:
            raise errors.page_not_found(raw.path)
        if method == "GET" and str(request.params.get("watch", "")).lower() in ("true", "1"):
            selector = _selector(request, info)
            if name is not None:
                selector = Selector(labels=selector.labels, fields=(
                    *selector.fields,
                    *parse_field_selector(f"metadata.name={name}", info.storage_key)))
            return await self._watch(request, raw, info, namespace, selector)
        options = WriteOptions()
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            options = parse_write_options(method, request.params, request.data, request.body,
                                          raw.content_type, raw.headers.get("User-Agent", ""))
            options.on_drop = lambda problem: self.dropped_fields.append(
                f"{method} {raw.path}: {problem}")
        if api_path.subresource == "scale" and name is not None and not info.custom \
                and "scale" in info.subresources:
            return _json_response(serve_scale(self.store, info, method, namespace, name,
                                              raw.content_type, request.data, options))
        if method == "GET" and name is None:
            return self._list(request, info, namespace)
        if method == "GET" and name is not None:
            if api_path.subresource not in (None, "status"):
                raise errors.page_not_found(raw.path)
            obj = self.store.get(info, namespace, name)
            table = _wants_table(request)
            if table and api_path.subresource is None:
                return _json_response(build_table(
                    info, [obj], str(self.store.rv),
                    request.params.get("includeObject", "PartialObjectMetadata"), single=True))
            return _json_response(obj)
        if method == "POST" and name is None:
            self._check_content_type(raw)
            return _warned(_json_response(self.store.create(info, namespace, request.data,
                                                            options), 201), options)
        if method == "PUT" and name is not None:
            self._check_content_type(raw)
            return _warned(_json_response(self.store.replace(
                info, namespace, name, request.data, api_path.subresource, options)), options)
        if method == "PATCH" and name is not None:
            content_type = raw.content_type
            if content_type == APPLY_PATCH and api_path.subresource is None:
                try:
                    config = yaml.safe_load(request.body.decode() or "null")
                except (yaml.YAMLError, UnicodeDecodeError) as exc:
                    raise errors.bad_request(f"error decoding YAML: {exc}") from exc
                obj, created = self.store.apply(info, namespace, name, config, options)
                return _warned(_json_response(obj, 201 if created else 200), options)
            if content_type not in PATCH_TYPES:
                raise errors.unsupported_media_type(
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}"
                    + ("" if info.custom else f", {STRATEGIC_MERGE_PATCH}"))
            if request.data is None:
                raise errors.bad_request("the body of the request is not valid JSON")
            return _warned(_json_response(self.store.patch(
                info, namespace, name, content_type, request.data, api_path.subresource,
                options)), options)
        if method == "DELETE" and name is not None:
            obj, _gone = self.store.delete(info, namespace, name,
                                           _delete_options(request, options.dry_run))
            return _json_response(obj)
        if method == "DELETE":
            deleted = self.store.delete_collection(info, namespace, _selector(request, info),
                                                   _delete_options(request, options.dry_run))
            return _json_response({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                                   "metadata": {"resourceVersion": str(self.store.rv)},
                                   "items": deleted})
        raise errors.method_not_allowed(f"the server does not allow this method on the "
                                        f"requested resource ({method})")

    @staticmethod
    def _check_content_type(raw: aiohttp.web.BaseRequest) -> None:
        if raw.content_type not in ("application/json", "application/octet-stream", "") \
                and not raw.content_type.endswith("+json"):
            hint = (" (the Aegis API emulator reads JSON only: typed `kubectl create "
                    "<kind>` generators send protobuf, use `kubectl apply -f` instead)"
                    if "protobuf" in raw.content_type else "")
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json{hint}")

    def _list(self, request: kmock.Request, info: ResourceInfo,
              namespace: str | None) -> aiohttp.web.Response:
        try:
            limit = int(request.params.get("limit") or 0)
        except ValueError as exc:
            raise errors.bad_request(f"limit: {exc}") from exc
        items, rv, token = self.store.list_objects(info, namespace, _selector(request, info),
                                           limit=limit,
                                           continue_token=request.params.get("continue"))
        if _wants_table(request):
            table = build_table(info, items, rv,
                                request.params.get("includeObject", "PartialObjectMetadata"))
            if token:
                table["metadata"]["continue"] = token
            return _json_response(table)
        metadata: JsonDict = {"resourceVersion": rv}
        if token:
            metadata["continue"] = token
        return _json_response({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                               "metadata": metadata, "items": items})

    # ------------------------------------------------------------------ watch

    async def _watch(self, request: kmock.Request, raw: aiohttp.web.BaseRequest,
                     info: ResourceInfo, namespace: str | None,
                     selector: Selector) -> aiohttp.web.StreamResponse:
        params = request.params
        since = params.get("resourceVersion") or ""
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        initial_events = params.get("sendInitialEvents") in ("true", "1")
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise errors.bad_request(f"timeoutSeconds: {exc}") from exc
        if since not in ("", "0") and not since.isdigit():
            raise errors.bad_request(f"invalid resourceVersion {since!r}")

        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        key = info.storage_key
        # Subscribe and take the starting state in one step of the loop: nothing can slip between.
        self.store.subscribe(key, queue.put_nowait)
        start_rv = self.store.rv
        backlog: list[JsonDict] = []
        expired = False
        if since in ("", "0"):
            backlog = [{"type": "ADDED", "object": obj}
                       for obj in self.store.snapshot(info, namespace) if selector.matches(obj)]
        else:
            replay = self.store.events_since(key, int(since))
            if replay is None:
                expired = True
            else:
                backlog = [e for e in (self._filter(ev, info, namespace, selector)
                                       for ev in replay if ev.rv <= start_rv) if e is not None]
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            await response.prepare(raw)
            if expired:
                await self._send(response, {"type": "ERROR", "object": errors.gone(
                    f"too old resource version: {since} ({start_rv})").to_status()})
                return response
            for event in backlog:
                await self._send(response, event)
            if bookmarks and (initial_events or since in ("", "0")):
                await self._send(response, self._bookmark(info, start_rv, initial_events))
            await self._stream_live(response, queue, info, namespace, selector, start_rv,
                                    timeout, bookmarks)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.store.unsubscribe(key, queue.put_nowait)
            if task is not None:
                self._watch_tasks.discard(task)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _stream_live(self, response: aiohttp.web.StreamResponse,
                           queue: asyncio.Queue[WatchEvent], info: ResourceInfo,
                           namespace: str | None, selector: Selector, start_rv: int,
                           timeout: float | None, bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = self.bookmark_interval if bookmarks else None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                wait = remaining if wait is None else min(wait, remaining)
            try:
                event = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                if bookmarks and queue.empty():
                    await self._send(response, self._bookmark(info, self.store.rv, False))
                continue
            if event.rv <= start_rv:
                continue  # already part of the replayed backlog
            rendered = self._filter(event, info, namespace, selector)
            if rendered is not None:
                await self._send(response, rendered)

    @staticmethod
    def _filter(event: WatchEvent, info: ResourceInfo, namespace: str | None,
                selector: Selector) -> JsonDict | None:
        """What a watcher sees of an event: the selectors decide ADDED/DELETED transitions."""
        obj = event.obj
        if namespace is not None and obj["metadata"].get("namespace") != namespace:
            return None
        now_matches = selector.matches(obj)
        if event.type == "MODIFIED" and event.old is not None:
            was_matching = selector.matches(event.old)
            if now_matches and not was_matching:
                kind = "ADDED"
            elif was_matching and not now_matches:
                kind = "DELETED"
            elif now_matches:
                kind = "MODIFIED"
            else:
                return None
        elif now_matches or (event.type == "DELETED" and event.old is not None
                             and selector.matches(event.old)):
            kind = event.type
        else:
            return None
        return {"type": kind, "object": as_version(info, obj)}

    @staticmethod
    def _bookmark(info: ResourceInfo, rv: int, initial_events_end: bool) -> JsonDict:
        metadata: JsonDict = {"resourceVersion": str(rv)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": info.kind,
                                               "apiVersion": info.api_version,
                                               "metadata": metadata}}

    @staticmethod
    async def _send(response: aiohttp.web.StreamResponse, event: JsonDict) -> None:
        await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    async def close_watches(self) -> None:
        for task in list(self._watch_tasks):
            task.cancel()


def load_crds(crd_dir: Path) -> list[JsonDict]:
    """Every CustomResourceDefinition in the YAML files of a directory."""
    crds = []
    for path in sorted(crd_dir.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


class ApiServer:
    """The emulator on its own thread and event loop; a context manager.

    >>> with ApiServer(crd_dir=Path("crds")) as api:
    ...     api.write_kubeconfig(tmp / "kubeconfig")
    """

    def __init__(self, crd_dir: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 *, record_requests: bool = False, bookmark_interval: float = 5.0,
                 admin_token: str | None = None, tls: bool = True,
                 tls_dir: Path | None = None) -> None:
        self.crd_dir = crd_dir
        # https by default, as kube-apiserver: kubectl only sends a token or a client
        # certificate over TLS. The CA is made here and written into kubeconfigs (`ca_pem`
        # for an in-pod `ca.crt`); with `tls_dir` the CA and serving pair are also written
        # there. `tls=False`: plain http only.
        self.ca = CertificateAuthority()
        self.tls: ServingCertificate | None = (
            make_serving_certificate(self.ca, host, tls_dir) if tls else None)
        self.plain_url = ""
        # The bearer token of the admin (`system:masters`) the kubeconfig carries.
        self.admin_token = admin_token or f"aegis-admin-{secrets.token_hex(16)}"
        self.host = host
        self.port = port
        self.record_requests = record_requests
        self.bookmark_interval = bookmark_interval
        self.url = ""
        self._handler: KubeApiHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def handler(self) -> KubeApiHandler:
        """The kmock handler: inject reactions or read `store` (from the server thread only)."""
        if self._handler is None:
            raise RuntimeError("the API server is not started")
        return self._handler

    def start(self) -> ApiServer:
        if self._thread is not None:
            raise RuntimeError("the API server is already started")
        self._thread = threading.Thread(target=self._run, name="aegis-apiserver", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"the API server failed to start: {self._error}") from self._error
        if not self.url:
            raise RuntimeError("the API server did not start within 30 s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        handler = KubeApiHandler(self.crd_dir, record_requests=self.record_requests,
                                 bookmark_interval=self.bookmark_interval,
                                 admin_token=self.admin_token)
        self._handler = handler
        server = aiohttp.web.Server(handler, handler_cancellation=True,
                                    access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        context = server_context(self.ca, self.tls) if self.tls is not None else None
        site = aiohttp.web.TCPSite(runner, self.host, self.port, ssl_context=context)
        # Plain http as well, same handler and same authentication (kubectl sends no
        # credentials there, so it is anonymous): for probes of /healthz and /version.
        plain = aiohttp.web.TCPSite(runner, self.host, 0) if self.tls is not None else None
        async with handler:
            await site.start()
            port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
            self.port = port
            handler.server_address = f"{self.host}:{port}"
            self.url = f"{'https' if self.tls is not None else 'http'}://{self.host}:{port}"
            self.plain_url = self.url
            if plain is not None:
                await plain.start()
                plain_port = int(plain._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
                self.plain_url = f"http://{self.host}:{plain_port}"
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                await handler.close_watches()
                await runner.cleanup()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)
        self._thread = None

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server loop (e.g. to read `handler.store`) and return it."""
        if self._loop is None:
            raise RuntimeError("the API server is not started")

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def write_kubeconfig(self, path: Path, *, namespace: str = "default",
                         token: str | None = None, token_file: Path | None = None,
                         client_certificate: bool = False) -> Path:
        """A kubeconfig for the admin (`kubernetes-admin` in `system:masters`: the bearer
        token `admin_token`, or with `client_certificate=True` a client certificate as
        kubeadm's admin.conf), or for `token` /
        `token_file` (a ServiceAccount token from `issue_token`; a file is re-read by
        clients that support `tokenFile`, which is how a rotated token is picked up)."""
        user: JsonDict
        if token_file is not None:
            user = {"tokenFile": str(token_file)}
        elif token is not None:
            user = {"token": token}
        elif client_certificate and self.tls is not None:
            pair = self.ca.client(ADMIN_USER, (MASTERS,))
            user = {"client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
                    "client-key-data": base64.b64encode(pair.key_pem).decode()}
        else:
            user = {"token": self.admin_token}
        cluster: JsonDict = {"server": self.url}
        if self.tls is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca.cert_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "aegis-sandbox", "cluster": cluster}],
            "users": [{"name": "aegis-sandbox", "user": user}],
            "contexts": [{"name": "aegis-sandbox", "context": {
                "cluster": "aegis-sandbox", "user": "aegis-sandbox", "namespace": namespace}}],
            "current-context": "aegis-sandbox",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def issue_token(self, namespace: str, service_account: str, *,
                    expiration_seconds: int = 3600) -> str:
        """A token for an existing ServiceAccount, as TokenRequest (`kubectl create token`)
        issues it: it identifies `system:serviceaccount:<namespace>:<name>`."""
        access = self.handler.access
        response = self.call(access.token_request, "POST", namespace, service_account,
                             {"spec": {"expirationSeconds": expiration_seconds}},
                             "application/json")
        token: str = response["status"]["token"]
        return token

    def write_token_file(self, path: Path, namespace: str, service_account: str, *,
                         expiration_seconds: int = 3600) -> Path:
        """Write a fresh ServiceAccount token to `path` (atomically, as the kubelet rotates a
        projected token: a reader never sees a half-written file)."""
        token = self.issue_token(namespace, service_account,
                                 expiration_seconds=expiration_seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(token)
        partial.replace(path)
        return path

    def usage(self, user: str) -> dict[Access, int]:
        """Every (verb, group, resource, subresource, namespace) `user` was allowed or
        refused, with counts (see `apiserver_rbac.Access`)."""
        return self.handler.access.usage.of(user)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aegis.sandbox.apiserver",
                                     description="Run the Kubernetes API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--crds", type=Path, default=None, help="directory of CRD YAML files")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="also write a kubeconfig pointing at the emulator here")
    args = parser.parse_args(argv)
    if args.crds is not None and not args.crds.is_dir():
        parser.error(f"--crds {args.crds}: not a directory; pass the folder holding CRD YAML "
                     "files, e.g. --crds crds/")
    server = ApiServer(crd_dir=args.crds, host=args.host, port=args.port).start()
    if args.kubeconfig is not None:
        server.write_kubeconfig(args.kubeconfig)
    # The https URL first (the kubeconfig's), then the plain-http one (anonymous probes).
    print(server.url, flush=True)
    print(server.plain_url, flush=True)
    stop = threading.Event()
    try:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
