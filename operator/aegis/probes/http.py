"""HTTP(S) GET check: healthy when the status is one of `expectStatus`.

Redirects are not followed (a redirect is an answer: list 301/302 in `expectStatus` if it is
a healthy one), so a check never wanders to another host.

Every connection goes through `aegis.reach`: the host is resolved, every address checked
against the operator's endpoint rule, and the socket opened to exactly the checked address
(TLS still verifies the certificate against the host name). Proxy environment variables are
not used: a proxy would connect on the operator's behalf to addresses nobody checked.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from aegis.api.failoverplan import HttpCheck
from aegis.probes.base import CheckResult, SecretReader, timed
from aegis.reach import (
    EndpointRefused,
    EndpointRule,
    Resolver,
    guarded_create_connection,
    system_resolver,
)

USER_AGENT = "aegis-probe/1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@functools.cache
def _tls_context(insecure_skip_verify: bool) -> ssl.SSLContext:
    # Loading the CA store costs ~100 ms; contexts are safe to share between threads.
    context = ssl.create_default_context()
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect: Callable[..., socket.socket]) -> None:
        super().__init__()
        self._connect = connect

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = http.client.HTTPConnection(host, **kwargs)
            conn._create_connection = self._connect  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, connect: Callable[..., socket.socket]) -> None:
        super().__init__(context=context)
        self._tls = context
        self._connect = connect

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPSConnection:
            conn = http.client.HTTPSConnection(host, context=self._tls, **kwargs)
            conn._create_connection = self._connect  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req)


def guarded_opener(
    rule: EndpointRule,
    insecure_skip_verify: bool = False,
    resolver: Resolver = system_resolver,
) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect, uses no proxy, and connects only to addresses
    `rule` allows (resolved once, connected to as checked)."""
    connect = guarded_create_connection(rule, resolver)
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({}),
        _NoRedirect(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
        _GuardedHTTPHandler(connect),
        _GuardedHTTPSHandler(_tls_context(insecure_skip_verify), connect),
    ):
        opener.add_handler(handler)
    return opener


def http_status(
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    insecure_skip_verify: bool = False,
    endpoints: EndpointRule | None = None,
) -> int:
    """Status code of a GET of `url` (non-2xx answers included); raises on no answer, and
    EndpointRefused when the host is not one `endpoints` allows (default: the strict rule)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r}: only http:// and https:// URLs are probed")
    rule = endpoints or EndpointRule()
    rule.check_url("url", url)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, method="GET", headers={"User-Agent": USER_AGENT}
    )
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        opener = guarded_opener(rule, insecure_skip_verify)
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)  # drain a little so keep-alive servers see a clean close
            return int(response.status)
    except urllib.error.HTTPError as answer:
        answer.close()
        return int(answer.code)


def check_http(
    name: str,
    spec: HttpCheck,
    secrets: SecretReader | None,
    timeout: float,
    endpoints: EndpointRule | None = None,
) -> CheckResult:
    """GET `spec.url` with headers from `headersSecretRef`; never raises. A host that
    `endpoints` refuses fails the check without any connection."""
    known: list[str] = []

    def run() -> tuple[bool, str]:
        headers: dict[str, str] = {}
        if spec.headers_secret_ref is not None:
            if secrets is None:
                return False, "headersSecretRef is set but no Secret reader was given"
            headers = secrets.data(spec.headers_secret_ref)
            known.extend(headers.values())
        try:
            status = http_status(
                spec.url, headers, timeout, spec.insecure_skip_verify, endpoints
            )
        except EndpointRefused as refused:
            return False, str(refused)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            return False, f"GET {spec.url}: {reason}"
        expected = spec.expect_status
        if status in expected:
            return True, f"HTTP {status}"
        return False, f"HTTP {status}, expected {', '.join(map(str, expected))}"

    return timed(name, run, known)
