"""The web server that the run command, the Docker image and the resilience suite start: daphne, with a cap on
request bodies.

daphne (on Twisted's HTTP channel) reads a request's whole body, into memory or a temporary file, before the
application sees any of it, so no Django middleware can refuse a 4 GB POST in time: without a proxy in front,
one such request fills the disk or the memory. Here the server refuses a body past SERVER_MAX_BODY_BYTES itself:
a declared Content-Length past it is answered 413 before a byte of the body is read, and a chunked body is cut
off with 413 as soon as it passes the limit. Everything else is daphne's, command line included:

    python -m deepseek_web.daphne_server -b 127.0.0.1 -p 8000 deepseek_web.asgi:application
"""
from __future__ import annotations

from typing import Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from django.conf import settings

REFUSAL_BODY = b"The request body is larger than this server accepts.\n"
REFUSAL = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(REFUSAL_BODY)) + REFUSAL_BODY


class BoundedRequest(WebRequest):
    """daphne's request, refusing a body past the server's max_body_bytes before it is buffered."""

    refused = False
    received = 0

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted's name
        # Called once the headers are in, before any of the body: `length` is the Content-Length (None: chunked).
        if length is not None and length > self.server.max_body_bytes:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.server.max_body_bytes:  # a chunked body (a declared length is checked above)
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self.refused:  # a refused request never reaches the application
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        """413 and close, reading nothing more (the buffered part of a chunked body is dropped)."""
        self.refused = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        self.channel.transport.write(REFUSAL)
        self.channel.loseConnection()


class BoundedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest  # as daphne's own factory sets its WebRequest
        return protocol


class BoundedServer(Server):
    """daphne's Server with BoundedHTTPFactory. Server.run() builds its factory as `self.http_factory =
    HTTPFactory(self)`, so the attribute swaps in ours when it is set."""

    def __init__(self, *args: Any, max_body_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The application (and so Django's settings) is loaded before the server is made.
        self.max_body_bytes = max_body_bytes if max_body_bytes is not None else settings.SERVER_MAX_BODY_BYTES

    @property
    def http_factory(self) -> HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        self._http_factory = factory if isinstance(factory, BoundedHTTPFactory) else BoundedHTTPFactory(self)


class BoundedCommandLineInterface(CommandLineInterface):
    server_class = BoundedServer


def main() -> None:
    BoundedCommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
