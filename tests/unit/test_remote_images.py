"""Images by http(s) URL: refused unless enabled, then fetched only from public addresses, within size and time caps."""
from __future__ import annotations

import datetime
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from chat.images.remote import FetchPolicy, RemoteImageRefused, fetch_image_bytes, pinned_connection

CAP = 4096  # max_bytes for the size tests: small, so that "too large" is quick to send
TEST_SERVER = FetchPolicy(enabled=True, allow_private=True, timeout=5.0)
PUBLIC_ONLY = FetchPolicy(enabled=True, timeout=5.0)


def _png() -> bytes:
    out = BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, "PNG")
    return out.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append(_Hit(self.path, dict(self.headers)))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        route = getattr(self, "route_" + parts.path.strip("/").replace("-", "_").replace(".", "_"), None)
        try:
            route(query) if route else self._answer(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up, as it should for the oversized and slow ones

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes) -> None:
        for byte in data:
            if self.server.stop.wait(0.2):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def route_ok_png(self, query: dict) -> None:
        self._answer(200, PNG, Content_Type="image/png")

    def route_big(self, query: dict) -> None:
        # Says a gigabyte is coming, then sends nothing: only a fetcher that reads the body would wait here.
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.flush()
        self.server.stop.wait(5)

    def route_big_chunked(self, query: dict) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(20 * CAP // 1024):
            self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def route_big_unsized(self, query: dict) -> None:
        # No length at all: the body ends when the server closes the connection.
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"x" * 20 * CAP)

    def route_slow(self, query: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.flush()
        self._drip(b"x" * 1000)

    def route_slow_headers(self, query: dict) -> None:
        self._drip(b"HTTP/1.1 200 OK\r\nX-Drip: " + b"x" * 1000)

    def route_pause_then_redirect(self, query: dict) -> None:
        # Each hop is well within the timeout; together they are not.
        self.server.stop.wait(0.4)
        self._answer(302, Location="/pause-then-redirect")

    def route_redirect_to_ok(self, query: dict) -> None:
        self._answer(302, Location="/ok.png")

    def route_redirect_loop(self, query: dict) -> None:
        self._answer(302, Location="/redirect-loop")

    def route_redirect_to_private(self, query: dict) -> None:
        self._answer(302, Location="http://169.254.169.254/latest/meta-data")

    def route_redirect(self, query: dict) -> None:
        self._answer(int(query.get("status", 302)), Location=query["to"])

    def route_404(self, query: dict) -> None:
        self._answer(404, b"no such image")

    def route_garbage(self, query: dict) -> None:
        self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
        self.close_connection = True

    def route_truncated(self, query: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(PNG[:10])
        self.close_connection = True


@dataclass
class _Hit:
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[_Hit] = []
        self.stop = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        # The fetcher hangs up on purpose (caps, deadlines) while a handler still reads or writes: not a failure.
        if not isinstance(sys.exception(), ConnectionError):
            super().handle_error(request, client_address)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@dataclass
class FakeDNS:
    """A resolver with a fixed table; IP literals resolve to themselves, other unknown names fail."""

    table: dict[str, Sequence[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int, type: int = 0) -> list[tuple]:
        self.calls.append(host)
        addresses = self.table.get(host)
        if addresses is None:
            try:
                socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            except OSError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            addresses = [host]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]


@dataclass
class LocalConnector:
    """Serves every host from the local test server, so that a 'public' host can answer; records each connection."""

    server: _Server
    calls: list[tuple[str, str, int, tuple[str, ...]]] = field(default_factory=list)

    def __call__(self, scheme: str, host: str, port: int, addresses: Sequence[str], timeout: float):
        self.calls.append((scheme, host, port, tuple(addresses)))
        return pinned_connection("http", host, self.server.port, ("127.0.0.1",), timeout)


def _refusal(url: str, policy: FetchPolicy, **kwargs) -> RemoteImageRefused:
    with pytest.raises(RemoteImageRefused) as caught:
        fetch_image_bytes(url, policy, **kwargs)
    return caught.value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Off by default


def test_urls_are_refused_unless_an_operator_enables_them(server):
    # Given the default policy
    dns = FakeDNS({"good.example": ["93.184.216.34"]})
    # When an image URL comes in
    refusal = _refusal(server.url("/ok.png"), FetchPolicy(), resolver=dns)
    # Then it is refused with a sentence that says what to send instead
    assert refusal.code == "remote_images_disabled"
    assert refusal.message == "Images by http(s) URL are not accepted here; send the image as a data: URL."
    # And nothing was looked up or fetched
    assert dns.calls == [] and server.hits == []


# Happy paths


def test_it_fetches_the_image_bytes_when_enabled(server):
    # Given fetching is enabled
    # When the URL of a PNG is fetched
    body = fetch_image_bytes(server.url("/ok.png"), TEST_SERVER)
    # Then the bytes are the image's, untouched (the caller validates them)
    assert body == PNG
    assert Image.open(BytesIO(body)).size == (4, 4)


def test_it_connects_to_the_address_it_resolved_and_names_the_host_in_the_request(server):
    # Given a host name that resolves to the test server
    dns = FakeDNS({"pinned.test": ["127.0.0.1"]})
    # When its image is fetched, with an upper-case scheme
    body = fetch_image_bytes(f"HTTP://pinned.test:{server.port}/ok.png?size=small", TEST_SERVER, resolver=dns)
    # Then the name was looked up once, the connection went to that address, and Host still names the host
    assert body == PNG
    assert dns.calls == ["pinned.test"]
    [hit] = server.hits
    assert hit.path == "/ok.png?size=small"
    assert hit.headers["Host"] == f"pinned.test:{server.port}"
    # And the request says who it is and what it wants, and carries no credentials
    assert hit.headers["User-Agent"] == "deepseek-web image fetcher"
    assert hit.headers["Accept"] == "image/*"
    assert not {"Cookie", "Authorization", "Proxy-Authorization"} & set(hit.headers)


def test_a_host_with_only_public_addresses_is_fetched(server):
    # Given a host that resolves to a public address, served (for the test) by the local server
    dns = FakeDNS({"good.example": ["93.184.216.34"]})
    connector = LocalConnector(server)
    # When its image is fetched with the real address check
    body = fetch_image_bytes("http://good.example/ok.png", PUBLIC_ONLY, resolver=dns, connector=connector)
    # Then the connection was made to the resolved address, on the URL's default port
    assert body == PNG
    assert connector.calls == [("http", "good.example", 80, ("93.184.216.34",))]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_it_follows_a_relative_redirect(server, status):
    # Given a URL that redirects to a path on the same server
    url = server.url(f"/redirect?status={status}&to=/ok.png")
    # When it is fetched
    body = fetch_image_bytes(url, TEST_SERVER)
    # Then the image at the new location comes back
    assert body == PNG
    assert [hit.path.split("?")[0] for hit in server.hits] == ["/redirect", "/ok.png"]


def test_a_body_exactly_at_the_cap_is_accepted(server):
    # Given a cap of exactly the image's size
    policy = FetchPolicy(enabled=True, allow_private=True, max_bytes=len(PNG))
    # When it is fetched
    # Then it arrives whole
    assert fetch_image_bytes(server.url("/ok.png"), policy) == PNG


# URLs refused as such


@pytest.mark.parametrize("url", [
    "ftp://example.com/a.png",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:image/png;base64,iVBORw0KGgo=",
    "gopher://example.com/",
    "//example.com/a.png",
    "example.com/a.png",
])
def test_only_http_and_https_urls_are_accepted(url):
    # Given a policy that lets even private addresses through
    dns = FakeDNS({"example.com": ["93.184.216.34"]})
    # When a URL of another scheme is fetched
    refusal = _refusal(url, TEST_SERVER, resolver=dns)
    # Then it is refused as an invalid URL, before any lookup
    assert refusal.code == "invalid_url"
    assert refusal.message == "Only http and https image URLs are accepted."
    assert dns.calls == []


@pytest.mark.parametrize("url", [
    "http://user:secret@good.example/a.png",
    "http://user@good.example/a.png",
    "https://:secret@good.example/a.png",
    "http://good.example@127.0.0.1/a.png",
])
def test_user_names_and_passwords_in_the_url_are_refused(url):
    dns = FakeDNS({"good.example": ["93.184.216.34"]})
    # When a URL with credentials is fetched
    refusal = _refusal(url, TEST_SERVER, resolver=dns)
    # Then it is refused, before any lookup
    assert refusal.code == "invalid_url"
    assert refusal.message == "The image URL must not contain a user name or password."
    assert dns.calls == []


@pytest.mark.parametrize("url", [
    "http:///a.png",
    "http://:80/a.png",
    "https:a.png",
    "http://good.example:99999/a.png",
    "http://good.example:port/a.png",
    "http://[::1/a.png",
    "http://good example/a.png",
    "http://good.example/a.png\r\nX-Injected: yes",
    "http://good.example/a\x00.png",
    "http://" + "a" * 64 + ".example/a.png",
    "http://good.example/" + "a" * 9000,
])
def test_malformed_urls_are_refused(url):
    dns = FakeDNS({"good.example": ["93.184.216.34"]})
    # When a URL without a usable host, port or path is fetched
    refusal = _refusal(url, TEST_SERVER, resolver=dns)
    # Then it is refused as an invalid URL, before any lookup
    assert refusal.code == "invalid_url"
    assert refusal.message.startswith("The image URL")
    assert dns.calls == []


# Addresses


@pytest.mark.parametrize(("host", "addresses"), [
    ("evil.example", ["127.0.0.1"]),
    ("private.example", ["10.0.0.1"]),
    ("lan.example", ["192.168.1.1"]),
    ("meta.example", ["169.254.169.254"]),  # the cloud metadata service
    ("cgnat.example", ["100.64.0.1"]),
    ("zero.example", ["0.0.0.0"]),
    ("multicast.example", ["224.0.0.1"]),
    ("broadcast.example", ["255.255.255.255"]),
    ("v6-loopback.example", ["::1"]),
    ("v6-unspecified.example", ["::"]),
    ("ula.example", ["fd00::1"]),
    ("link-local.example", ["fe80::1%eth0"]),
    ("site-local.example", ["fec0::1"]),
    ("mapped.example", ["::ffff:10.0.0.1"]),
    ("mapped-loopback.example", ["::ffff:127.0.0.1"]),
    ("mapped-meta.example", ["::ffff:169.254.169.254"]),
    ("6to4.example", ["2002:7f00:1::1"]),
    ("teredo.example", ["2001:0:4136:e378:8000:63bf:3fff:fdd2"]),
    ("nat64.example", ["64:ff9b::a00:1"]),
    ("mixed.example", ["93.184.216.34", "10.0.0.1"]),
    ("mixed-v6.example", ["2606:2800:220:1:248:1893:25c8:1946", "::1"]),
])
def test_hosts_that_resolve_to_non_public_addresses_are_refused_before_connecting(server, host, addresses):
    # Given a host name that resolves to at least one address that is not public
    dns = FakeDNS({host: addresses})
    connector = LocalConnector(server)
    # When its image is fetched under the real address check
    refusal = _refusal(f"http://{host}/ok.png", PUBLIC_ONLY, resolver=dns, connector=connector)
    # Then it is refused, after a single lookup
    assert refusal.code == "forbidden_address"
    assert refusal.message == "The image URL's host resolves to a private, loopback or link-local address."
    assert dns.calls == [host]
    # And no connection was attempted
    assert connector.calls == [] and server.hits == []


@pytest.mark.parametrize("host", [
    "127.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "localhost", "0.0.0.0", "0",
    "[::1]", "[::ffff:127.0.0.1]", "169.254.169.254",
])
def test_loopback_in_any_spelling_is_refused_with_the_real_resolver(server, host):
    # Given the test server listening on 127.0.0.1
    # When a spelling of a loopback or unspecified address on its port is fetched under the real address check
    refusal = _refusal(f"http://{host}:{server.port}/ok.png", PUBLIC_ONLY)
    # Then the resolved address is refused, and the server saw nothing
    assert refusal.code == "forbidden_address"
    assert server.hits == []


def test_the_address_check_holds_for_https_too(server):
    dns = FakeDNS({"evil.example": ["127.0.0.1"]})
    connector = LocalConnector(server)
    refusal = _refusal("https://evil.example/ok.png", PUBLIC_ONLY, resolver=dns, connector=connector)
    assert refusal.code == "forbidden_address"
    assert connector.calls == []


# Redirects


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/x",
    "http://[::ffff:127.0.0.1]/",
    "http://localhost/admin",
    "https://127.0.0.1/",
    "http://rebound.example/",
])
def test_a_redirect_from_a_public_host_to_a_private_one_is_refused(server, target):
    # Given a public host whose server redirects to a non-public address
    dns = FakeDNS({"public.example": ["93.184.216.34"], "localhost": ["127.0.0.1"], "rebound.example": ["10.1.2.3"]})
    connector = LocalConnector(server)
    url = f"http://public.example/redirect?to={target}"
    # When its image is fetched
    refusal = _refusal(url, PUBLIC_ONLY, resolver=dns, connector=connector)
    # Then the second hop is refused by the same address check as the first
    assert refusal.code == "forbidden_address"
    # And only the public host was ever connected to
    assert [call[1] for call in connector.calls] == ["public.example"]
    assert [hit.path.split("?")[0] for hit in server.hits] == ["/redirect"]


def test_the_cloud_metadata_redirect_is_refused(server):
    dns = FakeDNS({"public.example": ["93.184.216.34"]})
    connector = LocalConnector(server)
    refusal = _refusal("http://public.example/redirect-to-private", PUBLIC_ONLY, resolver=dns, connector=connector)
    assert refusal.code == "forbidden_address"
    assert len(connector.calls) == 1 and dns.calls == ["public.example", "169.254.169.254"]


@pytest.mark.parametrize(("target", "message"), [
    ("ftp://public.example/a.png", "Only http and https image URLs are accepted."),
    ("file:///etc/passwd", "Only http and https image URLs are accepted."),
    ("http://user:secret@public.example/ok.png", "The image URL must not contain a user name or password."),
])
def test_a_redirect_to_an_unacceptable_url_is_refused(server, target, message):
    dns = FakeDNS({"public.example": ["93.184.216.34"]})
    connector = LocalConnector(server)
    refusal = _refusal(f"http://public.example/redirect?to={target}", PUBLIC_ONLY, resolver=dns, connector=connector)
    assert (refusal.code, refusal.message) == ("invalid_url", message)
    assert len(connector.calls) == 1


def test_redirects_stop_after_the_limit(server):
    # Given a URL that redirects to itself forever
    # When it is fetched with the default limit of three redirects
    refusal = _refusal(server.url("/redirect-loop"), TEST_SERVER)
    # Then the first request and three redirects were followed, and no more
    assert refusal.code == "too_many_redirects"
    assert refusal.message == "The image URL redirected more than 3 times."
    assert len(server.hits) == 4


def test_no_redirect_is_followed_when_the_limit_is_zero(server):
    policy = FetchPolicy(enabled=True, allow_private=True, max_redirects=0)
    refusal = _refusal(server.url("/redirect-to-ok"), policy)
    assert refusal.code == "too_many_redirects"
    assert len(server.hits) == 1


# Statuses and network errors


def test_an_error_status_is_refused_with_its_number(server):
    refusal = _refusal(server.url("/404"), TEST_SERVER)
    assert refusal.code == "fetch_failed"
    assert refusal.message == "The image URL answered HTTP 404."


@pytest.mark.parametrize("path", ["/garbage", "/truncated"])
def test_a_broken_answer_is_a_failed_fetch(server, path):
    refusal = _refusal(server.url(path), TEST_SERVER)
    assert refusal.code == "fetch_failed"
    assert refusal.message.startswith("The image could not be fetched: ")


def test_a_refused_connection_is_reported_without_internals():
    # Given a port nothing listens on
    url = f"http://127.0.0.1:{_free_port()}/ok.png"
    # When it is fetched
    refusal = _refusal(url, TEST_SERVER)
    # Then the client reads a short reason, with no error numbers, addresses or tracebacks
    assert refusal.code == "fetch_failed"
    assert refusal.message == "The image could not be fetched: the connection was refused."


@pytest.mark.parametrize("dns", [FakeDNS(), FakeDNS({"empty.example": []})], ids=["unknown", "no-addresses"])
def test_a_host_that_does_not_resolve_is_a_failed_fetch(dns):
    refusal = _refusal("http://empty.example/a.png", PUBLIC_ONLY, resolver=dns)
    assert refusal.code == "fetch_failed"
    assert refusal.message == "The image URL's host could not be resolved."


# Caps


def test_a_declared_length_over_the_cap_is_refused_before_reading(server):
    # Given a server that announces a gigabyte and then sends nothing
    policy = FetchPolicy(enabled=True, allow_private=True, max_bytes=CAP, timeout=5)
    # When it is fetched
    started = time.monotonic()
    refusal = _refusal(server.url("/big"), policy)
    # Then it is refused at once, without waiting for a body
    assert refusal.code == "too_large"
    assert refusal.message == "The image at the URL is larger than 4 KB."
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("path", ["/big-chunked", "/big-unsized"])
def test_a_body_without_a_length_is_cut_at_the_cap(server, path):
    policy = FetchPolicy(enabled=True, allow_private=True, max_bytes=CAP)
    refusal = _refusal(server.url(path), policy)
    assert refusal.code == "too_large"


def test_one_byte_over_the_cap_is_too_large(server):
    policy = FetchPolicy(enabled=True, allow_private=True, max_bytes=len(PNG) - 1)
    refusal = _refusal(server.url("/ok.png"), policy)
    assert refusal.code == "too_large"
    assert refusal.message == f"The image at the URL is larger than {len(PNG) - 1} bytes."


@pytest.mark.parametrize("path", ["/slow", "/slow-headers", "/pause-then-redirect"])
def test_a_slow_server_is_cut_at_the_deadline(server, path):
    # Given a server that keeps sending, a little at a time, so that no single read times out
    policy = FetchPolicy(enabled=True, allow_private=True, timeout=1, max_redirects=10)
    # When it is fetched with a one-second budget
    started = time.monotonic()
    refusal = _refusal(server.url(path), policy)
    # Then the whole fetch ends at the deadline
    assert refusal.code == "timeout"
    assert refusal.message == "The image URL did not deliver the image within the 1-second limit."
    assert time.monotonic() - started < 2


def test_a_slow_lookup_is_cut_at_the_deadline():
    def slow_resolver(host: str, port: int, type: int = 0) -> list[tuple]:
        time.sleep(3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    started = time.monotonic()
    refusal = _refusal("http://slow.example/a.png", FetchPolicy(enabled=True, timeout=1), resolver=slow_resolver)
    assert refusal.code == "timeout"
    assert time.monotonic() - started < 2


# TLS


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, list[str | None]]]:
    """A test server behind a self-signed certificate for pinned.test; records the names clients ask for (SNI)."""
    # cryptography comes with daphne (through twisted): no openssl command needed.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.test")]), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = _Server()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, names
    server.stop.set()
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_for_the_host_name_over_the_pinned_address(tls_server):
    # Given a TLS server at the address pinned.test resolves to, with a certificate no public CA signed
    server, names = tls_server
    dns = FakeDNS({"pinned.test": ["127.0.0.1"]})
    # When its image is fetched over https
    refusal = _refusal(f"https://pinned.test:{server.port}/ok.png", TEST_SERVER, resolver=dns)
    # Then the handshake named the original host, and the untrusted certificate stopped the fetch
    assert names == ["pinned.test"]
    assert refusal.code == "fetch_failed"
    assert refusal.message == "The image could not be fetched: the server's TLS certificate could not be verified."
    assert server.hits == []


def test_a_tls_handshake_that_never_finishes_is_cut_at_the_deadline():
    # Given a port that accepts connections (the kernel's backlog) but never answers the TLS hello
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        dns = FakeDNS({"pinned.test": ["127.0.0.1"]})
        policy = FetchPolicy(enabled=True, allow_private=True, timeout=1)
        # When an https URL there is fetched
        started = time.monotonic()
        refusal = _refusal(f"https://pinned.test:{listener.getsockname()[1]}/a.png", policy, resolver=dns)
    # Then it ends at the deadline
    assert refusal.code == "timeout"
    assert time.monotonic() - started < 2
