"""HTTP for every remote call: one client factory, URL checks, redirects checked hop by hop.

Rules (research/security.md):
- only http/https URLs; user:password@ in URLs is refused;
- a host that resolves to a loopback, private, link-local, multicast or reserved address is
  refused unless the caller allows private addresses (a source with `allow_private: true`, or a
  URL the user typed on the command line);
- redirects are followed by hand so each hop gets the same check; credentials (Authorization,
  tokens) are only ever sent to the host they were configured for.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from tihub import __version__
from tihub.errors import NetworkError, UnsafeURL

USER_AGENT = f"tihub/{__version__} (+https://github.com/tihub)"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=10.0)
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class URLPolicy:
    """What a URL may point at."""

    allow_private: bool = False  # loopback/private/link-local addresses
    schemes: tuple[str, ...] = ("http", "https")


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Anything not globally routable: private, loopback, link-local, CGNAT (100.64/10), reserved...
    return not ip.is_global or ip.is_multicast


def check_url(url: str, policy: URLPolicy = URLPolicy()) -> str:
    """Return `url` if it is allowed by `policy`, else raise UnsafeURL with the reason."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeURL(f"The URL {url!r} is malformed.") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise UnsafeURL(f"The URL {url!r} uses the scheme {scheme or 'none'!r}; only {'/'.join(policy.schemes)} is allowed.")
    if parts.username or parts.password:
        raise UnsafeURL(f"The URL {url!r} carries credentials; tihub refuses user:password@ URLs.")
    host = parts.hostname
    if not host:
        raise UnsafeURL(f"The URL {url!r} has no host.")
    if policy.allow_private:
        return url
    for ip in resolve(host):
        if _is_private(ip):
            raise UnsafeURL(
                f"The URL {url!r} points at the private or loopback address {ip}; "
                "set `allow_private: true` on the source to permit it."
            )
    return url


def resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address `host` resolves to (an IP literal is its own answer)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return [ipaddress.ip_address("127.0.0.1")]
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkError(f"Cannot resolve the host {host!r}: {exc}.") from None
    out = []
    for info in infos:
        addr = info[4][0]
        try:
            out.append(ipaddress.ip_address(addr.split("%", 1)[0]))
        except ValueError:
            continue
    return out


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, (pa.hostname or "").lower(), pa.port) == (pb.scheme, (pb.hostname or "").lower(), pb.port)


def make_client(timeout: httpx.Timeout | float | None = None, **kwargs: object) -> httpx.Client:
    """An httpx client with tihub's user agent and timeouts; redirects are NOT followed here."""
    headers = {"User-Agent": USER_AGENT}
    headers.update(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    return httpx.Client(
        timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        follow_redirects=False,
        headers=headers,
        trust_env=False,
        **kwargs,  # type: ignore[arg-type]
    )


@contextmanager
def stream(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    policy: URLPolicy = URLPolicy(),
    headers: dict[str, str] | None = None,
    auth_host_headers: dict[str, str] | None = None,
    first_hop_trusted: bool = False,
    content: bytes | None = None,
) -> Iterator[httpx.Response]:
    """Send a request, following redirects one hop at a time with every hop checked.

    `auth_host_headers` (e.g. a bearer token) are sent only while the URL stays on the origin of
    the first request. `first_hop_trusted` skips the private-address check for the URL itself
    (a URL the user typed); redirects are always checked against `policy`. `content` is the
    request body (kept across 307/308 redirects, dropped when a 301/302/303 turns it into a GET).
    """
    current = url
    origin = url
    if not first_hop_trusted:
        check_url(current, policy)
    else:
        check_url(current, URLPolicy(allow_private=True, schemes=policy.schemes))
    seen: set[str] = set()
    for _hop in range(MAX_REDIRECTS + 1):
        hdrs = dict(headers or {})
        if auth_host_headers and same_origin(current, origin):
            hdrs.update(auth_host_headers)
        try:
            request = client.build_request(method, current, headers=hdrs, content=content)
            response = client.send(request, stream=True)
        except httpx.TimeoutException:
            raise NetworkError(f"The request to {current} timed out.") from None
        except httpx.HTTPError as exc:
            raise NetworkError(f"The request to {current} failed: {exc}.") from None
        if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
            location = urljoin(current, response.headers["location"])
            response.close()
            if location in seen:
                raise NetworkError(f"The server redirects in a loop at {location}.")
            seen.add(location)
            check_url(location, policy)
            current = location
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, content = "GET", None
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise NetworkError(f"Too many redirects (more than {MAX_REDIRECTS}) starting at {url}.")
