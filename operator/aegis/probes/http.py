"""HTTP(S) GET check: healthy when the status is one of `expectStatus`.

Redirects are not followed (a redirect is an answer: list 301/302 in `expectStatus` if it is
a healthy one), so a check never wanders to another host.
"""

from __future__ import annotations

import functools
import http.client
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping

from aegis.api.failoverplan import HttpCheck
from aegis.probes.base import CheckResult, SecretReader, timed

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


def _opener(url: str, insecure_skip_verify: bool) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=_tls_context(insecure_skip_verify)))
    return urllib.request.build_opener(*handlers)


def http_status(
    url: str, headers: Mapping[str, str], timeout: float, insecure_skip_verify: bool = False
) -> int:
    """Status code of a GET of `url` (non-2xx answers included); raises on no answer."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r}: only http:// and https:// URLs are probed")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, method="GET", headers={"User-Agent": USER_AGENT}
    )
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        with _opener(url, insecure_skip_verify).open(request, timeout=timeout) as response:
            response.read(65536)  # drain a little so keep-alive servers see a clean close
            return int(response.status)
    except urllib.error.HTTPError as answer:
        answer.close()
        return int(answer.code)


def check_http(
    name: str, spec: HttpCheck, secrets: SecretReader | None, timeout: float
) -> CheckResult:
    """GET `spec.url` with headers from `headersSecretRef`; never raises."""
    known: list[str] = []

    def run() -> tuple[bool, str]:
        headers: dict[str, str] = {}
        if spec.headers_secret_ref is not None:
            if secrets is None:
                return False, "headersSecretRef is set but no Secret reader was given"
            headers = secrets.data(spec.headers_secret_ref)
            known.extend(headers.values())
        try:
            status = http_status(spec.url, headers, timeout, spec.insecure_skip_verify)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            return False, f"GET {spec.url}: {reason}"
        expected = spec.expect_status
        if status in expected:
            return True, f"HTTP {status}"
        return False, f"HTTP {status}, expected {', '.join(map(str, expected))}"

    return timed(name, run, known)
