"""What a namespaced object may make the operator reach: which addresses an endpoint may
resolve to, which namespaces a FailoverPlan may touch, which images and ServiceAccounts its
Jobs may run with.

Why this exists: a user who may only write `dr.aegis.dev` objects in one namespace writes a
URL, a workload name or a Job template, and the operator acts on it with its own identity,
RBAC and network position. Without these rules that user could scale `kube-system/coredns`,
read another namespace's Deployment into their plan's status, or have the operator GET a
cloud metadata address (which hands out the node's or the operator's cloud credentials).

The address rule, and why its defaults are what they are:

- link-local (169.254.0.0/16, fe80::/10), known cloud metadata addresses and names,
  unspecified (0.0.0.0, ::), multicast and reserved ranges are always refused: nothing a
  backup or a health check needs lives there, and the metadata services do.
- private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are allowed by default:
  in-cluster S3 (MinIO, Ceph RGW), database Services and webhooks resolve to cluster IPs
  there, and refusing them would break the common install. `AEGIS_ALLOW_PRIVATE_ENDPOINTS=false`
  (chart `endpoints.allowPrivate`) closes them for clusters that only talk to public APIs.
- loopback (127.0.0.0/8, ::1, `localhost`) is refused by default: in a pod it is the
  operator's own container (its metrics and health ports), never a user's service.
  `AEGIS_ALLOW_LOOPBACK_ENDPOINTS=true` opens it; the sandbox and the tests set it, since
  everything they run listens on 127.0.0.1.

Literal addresses (including the legacy IPv4 forms `2852039166` or `0251.0376.0251.0376`
that resolvers accept) are checked when a spec is accepted; host names are resolved and every
resulting address checked just before connecting, and the connection goes to the checked
address (so a name that re-resolves elsewhere between check and use, DNS rebinding, does
not get through). Nothing here sends traffic; `resolve_checked` only asks the resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Answers of cloud instance metadata / credential services. Most are link-local (refused
# anyway); the others are listed so they are refused even when private ranges are open.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS Pod Identity agent
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
METADATA_HOSTNAMES = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
# Shared address space (RFC 6598): used for pod and service ranges by some clusters, and by
# Alibaba's metadata service (listed above); Python does not count it as private.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)

ALLOW_LOOPBACK_ENV = "AEGIS_ALLOW_LOOPBACK_ENDPOINTS"
ALLOW_PRIVATE_ENV = "AEGIS_ALLOW_PRIVATE_ENDPOINTS"
ALLOW_LOOPBACK_VALUE = "endpoints.allowLoopback"
ALLOW_PRIVATE_VALUE = "endpoints.allowPrivate"

Resolver = Callable[[str, int], Sequence[str]]
"""Host and port → the addresses a connection would go to (an injected resolver in tests)."""


class EndpointRefused(ValueError):
    """An endpoint the rule does not allow; the message names the field, the address class
    and the setting that would allow it (or that nothing does)."""

    REASON = "EndpointNotAllowed"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for `host` (what a connect would try)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one, in any form a resolver would read as one
    (no lookup is made); None for a host name."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not _NUMERIC_HOST.match(text):
            return None
        try:
            # inet_aton reads the forms getaddrinfo accepts: 2852039166, 0xa9fea9fe, 0251.0.
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return _unwrapped(address)


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, which reaches it."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


@dataclass(frozen=True)
class EndpointRule:
    """Which address classes the operator may connect to on behalf of a namespaced object."""

    allow_loopback: bool = False
    allow_private: bool = True

    def address_problem(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        address = _unwrapped(address)
        if address in METADATA_ADDRESSES:
            return "a cloud metadata address, which is never allowed"
        if address.is_unspecified:
            return "the unspecified address, which is never allowed"
        if address.is_link_local:
            return "link-local, which is never allowed (cloud metadata services live there)"
        if address.is_multicast:
            return "a multicast address, which is never allowed"
        if address.is_loopback:
            if self.allow_loopback:
                return None
            return (
                f"loopback, which is refused unless {ALLOW_LOOPBACK_ENV}=true "
                f"(chart value {ALLOW_LOOPBACK_VALUE}: true)"
            )
        if address.is_reserved:
            return "a reserved address, which is never allowed"
        if address.is_private or address in CGNAT:
            if self.allow_private:
                return None
            return (
                f"a private address, which is refused while {ALLOW_PRIVATE_ENV}=false "
                f"(chart value {ALLOW_PRIVATE_VALUE})"
            )
        return None

    def host_problem(self, host: str) -> str | None:
        """What can be said of `host` without resolving it: a literal address is checked,
        a metadata or localhost name refused; other names are checked at connect time."""
        address = literal_address(host)
        if address is not None:
            problem = self.address_problem(address)
            return f"{host} is {problem}" if problem else None
        name = host.strip().rstrip(".").lower()
        if name in METADATA_HOSTNAMES:
            return f"{host} names a cloud metadata service, which is never allowed"
        if (name == "localhost" or name.endswith(".localhost")) and not self.allow_loopback:
            return (
                f"{host} is loopback, which is refused unless {ALLOW_LOOPBACK_ENV}=true "
                f"(chart value {ALLOW_LOOPBACK_VALUE}: true)"
            )
        return None

    def check_url(self, field: str, url: str) -> None:
        """Raise EndpointRefused when `url`'s host is refused without resolving it."""
        host = url_host(url)
        problem = self.host_problem(host) if host else f"{url!r} has no host"
        if problem:
            raise EndpointRefused(f"{field}: {problem}; point it at the service's own address")

    def resolve_checked(
        self, host: str, port: int, resolver: Resolver = system_resolver, field: str = "endpoint"
    ) -> list[str]:
        """The addresses to connect to for `host`, every one allowed; raises EndpointRefused
        when any is not (a name must not sometimes resolve somewhere forbidden)."""
        problem = self.host_problem(host)
        if problem:
            raise EndpointRefused(f"{field}: {problem}")
        literal = literal_address(host)
        addresses = [str(literal)] if literal is not None else list(resolver(host, port))
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            problem = self.address_problem(address)
            if problem:
                raise EndpointRefused(f"{field}: {host} resolves to {address}, {problem}")
        return addresses

    def check_resolved_url(
        self, field: str, url: str, resolver: Resolver = system_resolver
    ) -> None:
        """Resolve `url`'s host and raise EndpointRefused when any address is refused (for
        clients that connect by themselves, such as boto3)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        default = 443 if parts.scheme == "https" else 80
        try:
            port = parts.port or default
        except ValueError:
            port = default
        if not host:
            raise EndpointRefused(f"{field}: {url!r} has no host")
        self.resolve_checked(host, port, resolver, field)


def url_host(url: str) -> str:
    """The host of `url` (brackets of an IPv6 literal removed); empty when it has none."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def guarded_create_connection(
    rule: EndpointRule, resolver: Resolver = system_resolver
) -> Callable[..., socket.socket]:
    """A drop-in for `socket.create_connection` that connects only to addresses the rule
    allows, resolving once and connecting to exactly what was checked."""

    def create_connection(address: tuple[str, int], timeout: Any, *args: Any) -> socket.socket:
        host, port = address[0], int(address[1])
        last: OSError | None = None
        for ip in rule.resolve_checked(host, port, resolver):
            try:
                return socket.create_connection((ip, port), timeout, *args)
            except OSError as error:
                last = error
        assert last is not None
        raise last

    return create_connection


# ----------------------------------------------------------------------- names and images


def namespace_allowed(home: str, target: str, reachable: Sequence[str]) -> bool:
    """A plan in `home` may touch `target`: its own namespace, or one the settings list
    (`*` lists every namespace)."""
    return target == home or "*" in reachable or target in reachable


def matches(value: str, patterns: Sequence[str]) -> bool:
    """`value` equals a pattern, or starts with a pattern ending in `*` (a registry path)."""
    for pattern in patterns:
        if pattern == "*" or value == pattern:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
    return False
