"""API images by http(s) URL: off unless enabled, fetched only from public addresses, capped in size and time."""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

USER_AGENT = "deepseek-web image fetcher"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_URL_LENGTH = 8192
CHUNK_BYTES = 64 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
# NAT64 gateways turn 64:ff9b::a.b.c.d into a.b.c.d, so the embedded IPv4 address is where the request really goes.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

Resolver = Callable[..., Sequence[tuple]]
# (scheme, host, port, checked addresses, timeout) -> a connection that has not connected yet.
Connector = Callable[[str, str, int, Sequence[str], float], http.client.HTTPConnection]


class RemoteImageRefused(ValueError):
    """A remote image we will not fetch or did not get: `code` for programs, `message` for the API client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    max_bytes: int = 10 * 1024 * 1024
    timeout: float = 10.0  # total seconds for the whole fetch, redirects included
    max_redirects: int = 3
    allow_private: bool = False  # tests only: lets the test server on 127.0.0.1 be reached


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; refuses once none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.refusal()
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def refusal(self) -> RemoteImageRefused:
        return RemoteImageRefused("timeout",
                                  f"The image URL did not deliver the image within the {self.seconds:g}-second limit.")


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) host name or bare IP literal, as sent in Host and SNI
    port: int
    request_target: str  # path and query, percent-encoded


class _Pinned:
    """Connects to addresses we already checked while Host names the original host: no second lookup to rebind."""

    addresses: tuple[str, ...]
    port: int
    timeout: float

    def _open_socket(self) -> socket.socket:
        last_error: OSError | None = None
        for address in self.addresses:
            try:
                return socket.create_connection((address, self.port), self.timeout)
            except OSError as error:
                last_error = error
        raise last_error or OSError("no address to connect to")


class _PinnedHTTPConnection(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, addresses: Sequence[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = tuple(addresses)

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(_Pinned, http.client.HTTPSConnection):
    """TLS whose SNI and certificate check use the original host name, over a socket to the checked address."""

    def __init__(self, host: str, port: int, addresses: Sequence[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.addresses = tuple(addresses)

    def connect(self) -> None:
        # The plain socket is set first so that the deadline watchdog can cut a stalled handshake too.
        self.sock = self._open_socket()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def pinned_connection(scheme: str, host: str, port: int, addresses: Sequence[str],
                      timeout: float) -> http.client.HTTPConnection:
    """The default connector: a connection to one of `addresses` that presents itself as `host`."""
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    return cls(host, port, addresses, timeout)


def fetch_image_bytes(url: str, policy: FetchPolicy, *, resolver: Resolver = socket.getaddrinfo,
                      connector: Connector = pinned_connection) -> bytes:
    """The body of the image at `url`, fetched under `policy`; raises RemoteImageRefused with a reason otherwise.

    The caller validates the bytes as it would an upload. `connector` exists for tests, to serve any host locally."""
    if not policy.enabled:
        raise RemoteImageRefused("remote_images_disabled",
                                 "Images by http(s) URL are not accepted here; send the image as a data: URL.")
    deadline = _Deadline(policy.timeout)
    redirects = 0
    while True:
        target = _parse(url)
        addresses = _checked_addresses(target, policy, resolver, deadline)
        status, location, body = _request(target, addresses, policy, connector, deadline)
        if status not in REDIRECT_STATUSES:
            if not 200 <= status < 300:
                raise RemoteImageRefused("fetch_failed", f"The image URL answered HTTP {status}.")
            return body
        if location is None:
            raise RemoteImageRefused("fetch_failed", f"The image URL answered HTTP {status} without a Location.")
        if redirects >= policy.max_redirects:
            raise RemoteImageRefused("too_many_redirects",
                                     f"The image URL redirected more than {policy.max_redirects} times.")
        redirects += 1
        url = urljoin(url, location)


def _invalid(message: str) -> RemoteImageRefused:
    return RemoteImageRefused("invalid_url", message)


def _parse(url: str) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"The image URL is longer than {MAX_URL_LENGTH} characters.")
    # Whitespace and control characters could split the request line or hide what the URL really points at.
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid("The image URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("The image URL is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _invalid("Only http and https image URLs are accepted.")
    if "@" in parts.netloc:
        raise _invalid("The image URL must not contain a user name or password.")
    host = parts.hostname
    if not host:
        raise _invalid("The image URL has no host.")
    try:
        # Host header, SNI and the resolver all want ASCII; the idna codec also refuses empty or overlong labels.
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _invalid("The image URL's host name is not valid.") from None
    path = parts.path or "/"
    request_target = path + (f"?{parts.query}" if parts.query else "")
    # Non-ASCII paths are sent percent-encoded; what is already encoded or reserved stays as it is.
    request_target = quote(request_target, safe="/?#[]@!$&'()*+,;=:%-._~")
    return _Target(scheme, host, port if port is not None else DEFAULT_PORTS[scheme], request_target)


def _checked_addresses(target: _Target, policy: FetchPolicy, resolver: Resolver,
                       deadline: _Deadline) -> list[str]:
    """Every address the host resolves to, once; all of them must be public or none is used."""
    infos = _resolve(target, resolver, deadline)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise RemoteImageRefused("fetch_failed", "The image URL's host could not be resolved.")
    if not policy.allow_private and any(_is_forbidden(address) for address in addresses):
        raise RemoteImageRefused("forbidden_address",
                                 "The image URL's host resolves to a private, loopback or link-local address.")
    return addresses


def _resolve(target: _Target, resolver: Resolver, deadline: _Deadline) -> Sequence[tuple]:
    # getaddrinfo takes no timeout, so it runs aside and we stop waiting at the deadline; the lookup itself ends on
    # its own, bounded by the system resolver's timeout.
    outcome: dict[str, object] = {}

    def lookup() -> None:
        try:
            outcome["infos"] = resolver(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError) as error:
            outcome["error"] = error

    thread = threading.Thread(target=lookup, name="remote-image-resolve", daemon=True)
    thread.start()
    thread.join(deadline.remaining())
    if thread.is_alive():
        raise deadline.refusal()
    if "error" in outcome:
        raise RemoteImageRefused("fetch_failed", "The image URL's host could not be resolved.")
    return outcome["infos"]  # type: ignore[return-value]


def _is_forbidden(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # zone ids (fe80::1%eth0) are not part of the address
    except ValueError:
        return True  # not an IP address at all: nothing we know how to check, so nothing we connect to
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address end up there: judge the IPv4 address as well.
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            candidates.append(address.sixtofour)
        if address.teredo is not None:
            candidates.extend(address.teredo)
        if address in NAT64_PREFIX:
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return any(_is_not_public(candidate) for candidate in candidates)


def _is_not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified or not address.is_global
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def _request(target: _Target, addresses: Sequence[str], policy: FetchPolicy, connector: Connector,
             deadline: _Deadline) -> tuple[int, str | None, bytes]:
    """One GET: status, Location and, unless it is a redirect, the body (at most max_bytes)."""
    connection = connector(target.scheme, target.host, target.port, addresses, deadline.remaining())
    # Socket timeouts bound each wait, not the sum of them: a server that drips a byte a second would never trip
    # one. The watchdog shuts the socket at the deadline, which ends whatever read or handshake is under way.
    watchdog = threading.Timer(deadline.remaining(), _cut, args=(connection,))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.putrequest("GET", target.request_target)
        connection.putheader("User-Agent", USER_AGENT)
        connection.putheader("Accept", "image/*")
        connection.endheaders()
        response = connection.getresponse()
        if response.status in REDIRECT_STATUSES:
            return response.status, response.getheader("Location"), b""
        if not 200 <= response.status < 300:
            return response.status, None, b""
        return response.status, None, _read_body(response, policy, deadline)
    except RemoteImageRefused:
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:
        if deadline.expired() or isinstance(error, TimeoutError):
            raise deadline.refusal() from None
        raise RemoteImageRefused("fetch_failed", f"The image could not be fetched: {_reason(error)}.") from None
    finally:
        watchdog.cancel()
        connection.close()


def _read_body(response: http.client.HTTPResponse, policy: FetchPolicy, deadline: _Deadline) -> bytes:
    too_large = RemoteImageRefused("too_large", f"The image at the URL is larger than {_size(policy.max_bytes)}.")
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise too_large
    body = bytearray()
    while True:
        deadline.remaining()
        # read1 returns what one socket read brings, so the deadline is checked between drips rather than after a
        # whole chunk has trickled in; one byte past the cap is enough to know it is too large.
        chunk = response.read1(min(CHUNK_BYTES, policy.max_bytes + 1 - len(body)))
        if not chunk:
            break
        body += chunk
        if len(body) > policy.max_bytes:
            raise too_large
    if deadline.expired():
        raise deadline.refusal()  # the watchdog cut the socket: what arrived is only part of the image
    if response.length:  # http.client's read1 stops quietly when the server closes before Content-Length is met
        raise RemoteImageRefused("fetch_failed", "The image could not be fetched: the connection closed early.")
    return bytes(body)


def _cut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to cut


def _reason(error: BaseException) -> str:
    """A few words for the API client: the exception's own text can carry paths, addresses or internals."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return "the server's TLS certificate could not be verified"
    if isinstance(error, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(error, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(error, ConnectionError):
        return "the connection was lost"
    if isinstance(error, http.client.HTTPException | ValueError):
        return "the server did not answer with valid HTTP"
    return "the connection failed"


def _size(n: int) -> str:
    mib = 1024 * 1024
    if n >= mib and n % mib == 0:
        return f"{n // mib} MB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"
