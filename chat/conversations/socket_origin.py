"""The chat socket's handshake must come from a page of this site: its Origin is the site's own origin
(scheme, host and port), the rule Django's CSRF check applies to form posts.

Channels' AllowedHostsOriginValidator compares host names only, so a page served on another port of the same
host (any other program there, or a user's own page on a shared host) could open sockets with the visitor's
cookies. Here the site's origin is the handshake's own: its Host (which must be in ALLOWED_HOSTS) with its
scheme (wss, or the proxy's X-Forwarded-Proto under SECURE_PROXY_SSL_HEADER, is https; ws is http); and
CSRF_TRUSTED_ORIGINS name any other origin the site is reached at (`https://*.example.com` for subdomains).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


class SameOriginValidator(OriginValidator):
    """Refuses (closes the handshake, as channels' validators do) a socket from any other origin, and one
    with no Origin header (browsers always send it). The allowed origins depend on the handshake, so they
    are worked out for each one rather than kept on the instance."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=[])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = _headers(scope).get(b"origin")
        parsed = urlparse(origin) if origin else None
        if parsed is not None and any(self.match_allowed_origin(parsed, allowed) for allowed in site_origins(scope)):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def _headers(scope: dict[str, Any]) -> dict[bytes, str]:
    return {name.lower(): value.decode("latin-1") for name, value in scope.get("headers") or []}


def _is_secure(scope: dict[str, Any], headers: dict[bytes, str]) -> bool:
    """As HttpRequest.is_secure() would answer for the handshake."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, secure_value = proxy
        given = headers.get(name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if given is not None:
            return given.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "wss"


def _allowed_hosts() -> list[str]:
    """ALLOWED_HOSTS as Django reads it (with DEBUG and none set, the loopback names)."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def site_origins(scope: dict[str, Any]) -> list[str]:
    """The origins a handshake may come from: the site's own (when its Host is allowed), and the trusted ones."""
    headers = _headers(scope)
    origins = []
    host = headers.get(b"host", "")
    domain, _port = split_domain_port(host)
    if domain and validate_host(domain, _allowed_hosts()):
        origins.append(f"{'https' if _is_secure(scope, headers) else 'http'}://{host}")
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        parsed = urlparse(trusted)
        # Django's "https://*.example.com" is channels' "https://.example.com" (the domain and its subdomains).
        netloc = "." + parsed.netloc[2:] if parsed.netloc.startswith("*.") else parsed.netloc
        origins.append(f"{parsed.scheme}://{netloc}")
    return origins
