"""Request metadata: the client's address (behind trusted proxies) and the request id, for HTTP requests and sockets."""
from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings

__all__ = ["client_ip", "meta", "request_id"]

# The longest request id kept (AuditEvent.request_id holds 64 characters).
REQUEST_ID_CHARS = 64


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


def _header_text(value: Any) -> str:
    """A header value either database stores: no NUL, no lone surrogate, at most REQUEST_ID_CHARS characters."""
    text = str(value or "").replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")[:REQUEST_ID_CHARS]


def request_id(request: Any) -> str:
    """The request's id: the X-Request-ID header if any, else a new one, kept on the request so every
    event of one request (or one socket connection) shares it."""
    stored = request.get("audit_request_id") if isinstance(request, Mapping) else getattr(
        request, "audit_request_id", None)
    if stored:
        return stored
    value = _header_text(meta(request).get("HTTP_X_REQUEST_ID", "")).strip() or uuid.uuid4().hex
    if isinstance(request, dict):
        request["audit_request_id"] = value
    else:
        try:
            request.audit_request_id = value
        except AttributeError:
            pass
    return value
