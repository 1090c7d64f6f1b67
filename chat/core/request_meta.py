"""Request metadata: the client's address (behind trusted proxies) and the request id, for HTTP requests and sockets."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from chat.core import log_context

__all__ = ["client_ip", "meta", "request_id"]


def meta(request: Any) -> Mapping[str, Any]:
    """request.META, or its equivalent for a Channels scope (a socket's connection)."""
    if isinstance(request, Mapping):
        headers = {
            "HTTP_" + name.decode("latin-1").upper().replace("-", "_"): value.decode("latin-1")
            for name, value in request.get("headers", [])
        }
        client = request.get("client")
        if client:
            headers["REMOTE_ADDR"] = str(client[0])
        return headers
    return getattr(request, "META", {})


def _ip(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):  # "[v6]" or "[v6]:port"
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value.split("%", 1)[0]))
    except ValueError:
        return None


def client_ip(meta: Mapping[str, Any]) -> str | None:
    """REMOTE_ADDR, unless AUDIT_TRUSTED_PROXY_COUNT proxies stand in front: then the address the
    outermost of them saw. X-Forwarded-For is the client's to forge, so only the proxies' entries count."""
    address = meta.get("REMOTE_ADDR")
    proxies = int(getattr(settings, "AUDIT_TRUSTED_PROXY_COUNT", 0) or 0)
    if proxies > 0:
        hops = [hop.strip() for hop in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",") if hop.strip()]
        if hops:
            address = hops[-proxies] if len(hops) >= proxies else hops[0]
    return _ip(address)


def request_id(request: Any) -> str:
    """The request's id: a trusted proxy's X-Request-ID if any (log_context.trusted_request_id), else a
    new one, kept on the request so every event of one request (or one socket connection) shares it."""
    stored = request.get("audit_request_id") if isinstance(request, Mapping) else getattr(
        request, "audit_request_id", None)
    if stored:
        return stored
    value = log_context.trusted_request_id(meta(request).get("HTTP_X_REQUEST_ID")) or log_context.new_request_id()
    if isinstance(request, dict):
        request["audit_request_id"] = value
    else:
        try:
            request.audit_request_id = value
        except AttributeError:
            pass
    return value
