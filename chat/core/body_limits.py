"""Bodies refused by their declared size, before anything parses them.

CsrfViewMiddleware reads request.POST (parsing a whole multipart body into temporary files) before
a view can look at the file's size. So this middleware, placed before it, compares Content-Length
with the cap the view declares (chat.core.view_declarations.body_limit) and answers as the view
would: the upload's JSON error, the import form's message. (Form posts elsewhere are capped by
DATA_UPLOAD_MAX_MEMORY_SIZE, the /v1 API by API_MAX_BODY_BYTES in its view; the socket by its frame size.)
Before any of them, the web server itself refuses a body past SERVER_MAX_BODY_BYTES unread
(deepseek_web/daphne_server.py): daphne would otherwise buffer a body of any size before Django runs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from chat.core.view_declarations import BODY_LIMIT, BodyLimit, declared

# Room for the multipart envelope around the file: boundaries, part headers, the CSRF token field.
MULTIPART_SLACK = 64 * 1024


def _declared_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


class BodyLimitMiddleware:
    # Either way (its work is in process_view, which Django runs in a thread when the chain is async).
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view, args, kwargs) -> HttpResponse | None:
        limit: BodyLimit | None = declared(view, BODY_LIMIT)
        if request.method != "POST" or limit is None:
            return None
        length = _declared_length(request)
        if length <= limit.max_bytes() + MULTIPART_SLACK:
            return None
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return limit.refuse(request, length)
