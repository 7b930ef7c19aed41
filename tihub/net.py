"""HTTP for every remote call: one client factory, URL checks, redirects checked hop by hop.

Rules (research/security.md):
- only http/https URLs; user:password@ in URLs is refused;
- a host that resolves to a loopback, private, link-local, multicast or reserved address is
  refused unless the caller allows private addresses (a source with `allow_private: true`, or a
  URL the user typed on the command line);
- redirects are followed by hand so each hop gets the same check; credentials (Authorization,
  tokens) are only ever sent to the host they were configured for, and only over https (or to
  this machine's loopback address);
- the connection goes to an address that was checked: the host is resolved once per hop, the
  addresses are checked, and the socket connects to one of *those* addresses (a name that
  answers a public address to the check and 127.0.0.1 to the connect reaches nothing);
- one deadline covers the whole exchange (connect, TLS, headers and body): every socket read
  and write waits at most until it, so a server dripping its headers cannot outlive it;
- every request asks for `Accept-Encoding: identity` and an answer with any other
  Content-Encoding is refused before its body is read (no decompression bomb can expand).
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from tihub import __version__
from tihub.errors import NetworkError, UnsafeURL

USER_AGENT = f"tihub/{__version__} (+https://github.com/tihub)"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=10.0)
MAX_REDIRECTS = 10
DEFAULT_DEADLINE_S = 900.0  # one exchange (all hops, headers and body) when the caller sets none


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
    checked_addresses(url, policy)
    return url


def checked_addresses(url: str, policy: URLPolicy = URLPolicy()) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """Check `url` against `policy` and return the addresses its host resolved to (the ones a
    connection may then use), or None where private addresses are allowed (no lookup made)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise UnsafeURL(f"The URL {url[:200]!r} is malformed.") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise UnsafeURL(f"The URL {url!r} uses the scheme {scheme or 'none'!r}; only {'/'.join(policy.schemes)} is allowed.")
    if parts.username or parts.password:
        raise UnsafeURL(f"The URL {url!r} carries credentials; tihub refuses user:password@ URLs.")
    host = parts.hostname
    if not host:
        raise UnsafeURL(f"The URL {url!r} has no host.")
    if policy.allow_private:
        return None
    ips = resolve(host)
    for ip in ips:
        if _is_private(ip):
            raise UnsafeURL(
                f"The URL {url!r} points at the private or loopback address {ip}; "
                "set `allow_private: true` on the source to permit it."
            )
    if not ips:
        raise NetworkError(f"Cannot resolve the host {host!r}: it has no address.")
    return ips


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


# -- connections: to the checked address, within one deadline ---------------------------------

@dataclass(frozen=True)
class _Exchange:
    """What `stream` checked for the hop in flight (read by the connection backend)."""

    host: str
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] | None  # None: private allowed
    deadline: float | None  # time.monotonic() value


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("tihub_exchange", default=None)


def _left(deadline: float | None, timeout: float | None) -> float | None:
    """The timeout for one socket operation: the per-operation timeout, cut at the deadline."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the deadline for this request has passed")
    return left if timeout is None else min(timeout, left)


def _deadline_now() -> float | None:
    exchange = _EXCHANGE.get()
    return exchange.deadline if exchange is not None else None


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends by the deadline of the exchange it
    serves now (a kept-alive connection serves several, each with its own deadline)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(_deadline_now(), timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(_deadline_now(), timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(_deadline_now(), timeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CheckedBackend(httpcore.SyncBackend):
    """Connects only to addresses `stream` checked for this hop (resolving and checking again
    for any other host), and bounds the connection by the exchange's deadline. A kept-alive
    connection serves a later request only to the same host, whose URL was checked again."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        exchange = _EXCHANGE.get()
        deadline = exchange.deadline if exchange is not None else None
        if exchange is not None and exchange.host == host.lower() and exchange.addresses is not None:
            addresses: list[Any] = list(exchange.addresses)
        elif exchange is not None and exchange.addresses is None:
            addresses = [host]  # private addresses allowed: nothing to pin
        else:  # a host nobody checked (a client used outside `stream`): check it now
            try:
                found = checked_addresses(f"http://[{host}]/" if ":" in host else f"http://{host}/")
            except (UnsafeURL, NetworkError) as exc:
                raise httpcore.ConnectError(str(exc)) from None
            addresses = list(found or [host])
        last: Exception | None = None
        for address in addresses:
            try:
                inner = super().connect_tcp(str(address), port, _left(deadline, timeout), local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return _DeadlineStream(inner)
        assert last is not None
        raise last


def make_client(timeout: httpx.Timeout | float | None = None, **kwargs: object) -> httpx.Client:
    """An httpx client with tihub's user agent and timeouts; redirects are NOT followed here.
    Its connections go to checked addresses within the deadline `stream` gives each request,
    and it asks for unencoded answers."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    headers.update(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    if "transport" not in kwargs:
        limits = kwargs.pop("limits", None)
        transport = httpx.HTTPTransport(limits=limits) if limits is not None else httpx.HTTPTransport()  # type: ignore[arg-type]
        transport._pool._network_backend = _CheckedBackend()  # httpcore's documented backend hook
        kwargs["transport"] = transport
    return httpx.Client(
        timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        follow_redirects=False,
        headers=headers,
        trust_env=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _may_carry_credentials(url: str) -> bool:
    """Tokens travel only over https (or to this machine itself, as test servers are)."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "https" or _loopback(parts.hostname or "")


def _refuse_encoding(response: httpx.Response, url: str) -> None:
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        response.close()
        raise UnsafeURL(
            f"The server at {url[:200]} answered with Content-Encoding {encoding[:40]!r}, which tihub did not ask for; "
            "refusing the answer (ask the site to serve plain files)."
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
    deadline: float | None = None,
) -> Iterator[httpx.Response]:
    """Send a request, following redirects one hop at a time with every hop checked.

    `auth_host_headers` (e.g. a bearer token) are sent only while the URL stays on the origin of
    the first request, and only over https. `first_hop_trusted` skips the private-address check
    for the URL itself (a URL the user typed); redirects are always checked against `policy`.
    `content` is the request body (kept across 307/308 redirects, dropped when a 301/302/303
    turns it into a GET). `deadline` (a `time.monotonic()` value; by default DEFAULT_DEADLINE_S
    from now) bounds every socket operation of every hop, the body read inside the `with`
    included. An answer with a Content-Encoding is refused (UnsafeURL); a malformed Location is
    one sentence (UnsafeURL).
    """
    current = url
    origin = url
    seen: set[str] = set()
    first = True
    if deadline is None:
        deadline = time.monotonic() + DEFAULT_DEADLINE_S
    for _hop in range(MAX_REDIRECTS + 1):
        hop_policy = URLPolicy(allow_private=True, schemes=policy.schemes) if (first and first_hop_trusted) else policy
        addresses = checked_addresses(current, hop_policy)
        first = False
        hdrs = dict(headers or {})
        if auth_host_headers and same_origin(current, origin) and _may_carry_credentials(current):
            hdrs.update(auth_host_headers)
        try:
            request = client.build_request(method, current, headers=hdrs, content=content)
        except httpx.InvalidURL:
            raise UnsafeURL(f"The URL {current[:200]!r} is malformed.") from None
        host = request.url.raw_host.decode("ascii").lower()  # as the connection pool spells it (IDNA)
        token = _EXCHANGE.set(_Exchange(host, tuple(addresses) if addresses is not None else None, deadline))
        try:
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise NetworkError(f"The request to {current} timed out.") from None
            except httpx.InvalidURL:
                raise UnsafeURL(f"The URL {current[:200]!r} is malformed.") from None
            except httpx.HTTPError as exc:
                raise NetworkError(f"The request to {current} failed: {exc}.") from None
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                location = _redirect_target(current, response)
                if location in seen:
                    raise NetworkError(f"The server redirects in a loop at {location}.")
                seen.add(location)
                current = location
                if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                    method, content = "GET", None
                continue
            _refuse_encoding(response, current)
            try:
                yield response
            finally:
                response.close()
            return
        finally:
            _EXCHANGE.reset(token)
    raise NetworkError(f"Too many redirects (more than {MAX_REDIRECTS}) starting at {url}.")


def _redirect_target(current: str, response: httpx.Response) -> str:
    """The absolute URL a redirect names, or UnsafeURL (one sentence) for a malformed one."""
    raw = response.headers.get("location", "")
    response.close()
    try:
        location = urljoin(current, raw.strip())
        parts = urlsplit(location)
        parts.port  # noqa: B018 - a bad port raises here, not later
        httpx.URL(location)
    except (ValueError, httpx.InvalidURL):
        raise UnsafeURL(f"The server at {current[:200]} redirected to a malformed address {raw[:100]!r}; the link is broken.") from None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in location):
        raise UnsafeURL(f"The server at {current[:200]} redirected to an address with control characters or spaces; the link is broken.")
    return location
