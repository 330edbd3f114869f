"""Authentication in the Kubernetes API emulator: who is asking.

As kube-apiserver: a request with no credentials is `system:anonymous` (group
`system:unauthenticated`), which RBAC then refuses almost everything; a bearer token that is
not valid is a 401 `Unauthorized` whatever the path (a bad token is never treated as
anonymous). Two kinds of tokens are accepted:

- the admin token the emulator makes at start-up (`Authenticator.admin_token`, written into
  `ApiServer.write_kubeconfig`): user `kubernetes-admin`, group `system:masters`, which RBAC
  lets do anything, as kubeadm's admin.conf;
- ServiceAccount tokens issued through the `serviceaccounts/token` subresource (TokenRequest,
  what `kubectl create token` calls): signed JWTs bound to the ServiceAccount's uid, so they
  stop working when it is deleted (also when it is deleted and re-created under the same
  name), when they expire, and when issued for another audience.

Every authenticated identity also gets `system:authenticated`, as the real server adds it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_errors import ApiError, FieldCause
from aegis.sandbox.apiserver_resources import ResourceInfo
from aegis.sandbox.apiserver_tls import identity_from_peercert

JsonDict = dict[str, Any]

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kubernetes-admin"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SA_PREFIX = "system:serviceaccount:"
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 2**32


@dataclass(frozen=True)
class Identity:
    """The user of one request, as the authenticators hand it to the authorizer."""

    name: str
    groups: tuple[str, ...]
    uid: str = ""

    @property
    def privileged(self) -> bool:
        """`system:masters` bypasses RBAC in kube-apiserver (no binding needed)."""
        return MASTERS in self.groups

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) for a ServiceAccount user."""
        if not self.name.startswith(SA_PREFIX):
            return None
        namespace, _, name = self.name[len(SA_PREFIX):].partition(":")
        return (namespace, name) if namespace and name else None


ANONYMOUS_IDENTITY = Identity(ANONYMOUS, (UNAUTHENTICATED,))
ADMIN_IDENTITY = Identity(ADMIN_USER, (MASTERS, AUTHENTICATED))


def service_account_user(namespace: str, name: str) -> str:
    return f"{SA_PREFIX}{namespace}:{name}"


def service_account_identity(namespace: str, name: str, uid: str = "") -> Identity:
    return Identity(service_account_user(namespace, name),
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                     AUTHENTICATED), uid)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expiration: datetime.datetime


class Authenticator:
    """Turns a request's `Authorization` header into an `Identity`, or a 401."""

    def __init__(self, serviceaccounts: ResourceInfo, *, admin_token: str | None = None,
                 audience: str = API_AUDIENCE) -> None:
        self.admin_token = admin_token or f"aegis-admin-{secrets.token_hex(16)}"
        self.audience = audience
        self._serviceaccounts = serviceaccounts
        self._key = secrets.token_bytes(32)
        # Verified claims by token: a client sends the same token on every request.
        self._verified: dict[str, JsonDict] = {}

    # ------------------------------------------------------------------ tokens

    def issue(self, namespace: str, name: str, sa_uid: str, *,
              expiration_seconds: int = DEFAULT_EXPIRATION,
              audiences: tuple[str, ...] = ()) -> IssuedToken:
        """A ServiceAccount token shaped like the real server's (a JWT with the same claims)."""
        now = int(time.time())
        exp = now + expiration_seconds
        claims = {
            "aud": list(audiences or (self.audience,)),
            "exp": exp, "iat": now, "nbf": now,
            "iss": self.audience,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": namespace,
                              "serviceaccount": {"name": name, "uid": sa_uid}},
            "sub": service_account_user(namespace, name),
        }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(),
                                  hashlib.sha256).digest())
        return IssuedToken(f"{header}.{payload}.{signature}",
                           datetime.datetime.fromtimestamp(exp, datetime.UTC))

    def _claims(self, token: str) -> JsonDict | None:
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        claims = self._verify(token)
        if claims is not None:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> JsonDict | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(),
                            hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return None
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            return None
        return claims if isinstance(claims, dict) else None

    # ------------------------------------------------------------------ requests

    def authenticate(self, authorization: str | None, store: Any,
                     peercert: object = None) -> Identity:
        """The identity of a request; `store` is read to check the ServiceAccount still exists.
        A client certificate the TLS layer verified against the emulator's CA comes first (CN
        the user, O the groups), as kube-apiserver's x509 authenticator."""
        from_cert = identity_from_peercert(peercert)
        if from_cert is not None:
            user, groups = from_cert
            return Identity(user, (*groups, AUTHENTICATED))
        header = (authorization or "").strip()
        if not header:
            return ANONYMOUS_IDENTITY
        parts = header.split(" ")
        if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
            # Not a bearer token (e.g. Basic): no authenticator claims it, so anonymous.
            return ANONYMOUS_IDENTITY
        token = parts[1]
        if hmac.compare_digest(token, self.admin_token):
            return ADMIN_IDENTITY
        claims = self._claims(token)
        if claims is None:
            raise unauthorized()
        now = time.time()
        if not (claims.get("nbf", 0) - 60 <= now < claims.get("exp", 0)):
            raise unauthorized()
        if self.audience not in (claims.get("aud") or []):
            raise unauthorized()
        info = claims.get("kubernetes.io") or {}
        namespace = str(info.get("namespace", ""))
        sa = info.get("serviceaccount") or {}
        try:
            current = store.get(self._serviceaccounts, namespace, str(sa.get("name", "")))
        except ApiError:
            raise unauthorized() from None  # its ServiceAccount was deleted
        meta = current.get("metadata") or {}
        if meta.get("uid") != sa.get("uid") or meta.get("deletionTimestamp"):
            raise unauthorized()
        return service_account_identity(namespace, str(sa.get("name")), str(sa.get("uid")))

    def token_request(self, store: Any, namespace: str, name: str, body: Any,
                      content_type: str) -> JsonDict:
        """POST .../serviceaccounts/<name>/token: a TokenRequest answered with a new token."""
        if "protobuf" in content_type and isinstance(body, bytes):
            spec = token_request_spec_from_protobuf(body)
        elif isinstance(body, dict):
            spec = body.get("spec") or {}
        else:
            raise errors.bad_request("the body of the request must be a TokenRequest")
        sa = store.get(self._serviceaccounts, namespace, name)  # 404 when missing
        seconds = spec.get("expirationSeconds")
        seconds = DEFAULT_EXPIRATION if seconds in (None, 0) else seconds
        causes = []
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            causes.append(FieldCause("spec.expirationSeconds", "FieldValueInvalid",
                                     f"Invalid value: {seconds!r}: must be an integer"))
        elif seconds < MIN_EXPIRATION:
            causes.append(FieldCause("spec.expirationSeconds", "FieldValueInvalid",
                                     f"Invalid value: {seconds}: may not specify a duration "
                                     "less than 10 minutes"))
        elif seconds > MAX_EXPIRATION:
            causes.append(FieldCause("spec.expirationSeconds", "FieldValueInvalid",
                                     f"Invalid value: {seconds}: may not specify a duration "
                                     "larger than 2^32 seconds"))
        if causes:
            raise errors.invalid(TOKEN_REQUEST_INFO, name, causes)
        audiences = tuple(str(a) for a in spec.get("audiences") or ()) or (self.audience,)
        issued = self.issue(namespace, name, sa["metadata"]["uid"],
                            expiration_seconds=int(seconds), audiences=audiences)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": list(audiences), "expirationSeconds": int(seconds),
                     "boundObjectRef": spec.get("boundObjectRef")},
            "status": {"token": issued.token,
                       "expirationTimestamp": issued.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }


TOKEN_REQUEST_INFO = ResourceInfo(group="authentication.k8s.io", version="v1",
                                  plural="tokenrequests", singular="tokenrequest",
                                  kind="TokenRequest", namespaced=True)


# ---------------------------------------------------------------------- protobuf

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one protobuf message (varint and bytes fields)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = struct.unpack_from("<q", data, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<i", data, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _strings(data: bytes, names: dict[int, str]) -> JsonDict:
    return {names[n]: v.decode() for n, v in _fields(data)
            if n in names and isinstance(v, bytes)}


def access_review_spec_from_protobuf(body: bytes) -> JsonDict:
    """The spec of a protobuf SelfSubjectAccessReview (`kubectl auth can-i` sends protobuf):
    {metadata=1, spec=2}; spec {resourceAttributes=1, nonResourceAttributes=2};
    ResourceAttributes {namespace=1, verb=2, group=3, version=4, resource=5, subresource=6,
    name=7}; NonResourceAttributes {path=1, verb=2}."""
    try:
        if not body.startswith(b"k8s\x00"):
            raise ValueError("no k8s protobuf envelope")
        raw = next(v for n, v in _fields(body[4:]) if n == 2)
        assert isinstance(raw, bytes)
        spec_bytes = next((v for n, v in _fields(raw) if n == 2), b"")
        assert isinstance(spec_bytes, bytes)
        spec: JsonDict = {}
        for number, value in _fields(spec_bytes):
            if number == 1 and isinstance(value, bytes):
                spec["resourceAttributes"] = _strings(value, {
                    1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource",
                    6: "subresource", 7: "name"})
            elif number == 2 and isinstance(value, bytes):
                spec["nonResourceAttributes"] = _strings(value, {1: "path", 2: "verb"})
        return spec
    except (ValueError, StopIteration, AssertionError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body of the request could not be decoded as a "
                                 f"protobuf SelfSubjectAccessReview: {exc}") from exc


def token_request_spec_from_protobuf(body: bytes) -> JsonDict:
    """The spec of a protobuf TokenRequest: `kubectl create token` sends protobuf.

    The envelope is `k8s\\0` + runtime.Unknown{typeMeta=1, raw=2}; TokenRequest is
    {metadata=1, spec=2, status=3}; TokenRequestSpec is {audiences=1 (repeated),
    boundObjectRef=3, expirationSeconds=4}.
    """
    try:
        if not body.startswith(b"k8s\x00"):
            raise ValueError("no k8s protobuf envelope")
        raw = next(v for n, v in _fields(body[4:]) if n == 2)
        assert isinstance(raw, bytes)
        spec_bytes = next((v for n, v in _fields(raw) if n == 2), b"")
        assert isinstance(spec_bytes, bytes)
        spec: JsonDict = {}
        for number, value in _fields(spec_bytes):
            if number == 1 and isinstance(value, bytes):
                spec.setdefault("audiences", []).append(value.decode())
            elif number == 4 and isinstance(value, int):
                spec["expirationSeconds"] = value
            elif number == 3 and isinstance(value, bytes):
                ref = {({1: "kind", 2: "apiVersion", 3: "name", 4: "uid"}.get(n, str(n))):
                       v.decode() for n, v in _fields(value) if isinstance(v, bytes)}
                spec["boundObjectRef"] = ref
        return spec
    except (ValueError, StopIteration, AssertionError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body of the request could not be decoded as a "
                                 f"protobuf TokenRequest: {exc}") from exc
