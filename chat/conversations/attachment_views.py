"""Uploading images and serving them back, to their owner only."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from chat.audit import record as audit
from chat.conversations import image_work, uploads
from chat.core.errors import ChatError
from chat.core.view_declarations import audited, body_limit

# The bodies Django's own parser refuses: MultiPartParserError (a malformed form, a part's headers over
# its 1 KB limit, as a 100 KB file name makes them) and SuspiciousOperation, whose subclasses are
# TooManyFilesSent (DATA_UPLOAD_MAX_NUMBER_FILES), TooManyFieldsSent, RequestDataTooBig and
# SuspiciousMultipartForm.
UNPARSEABLE_BODY = (MultiPartParserError, SuspiciousOperation)


def refuse_oversized(request: HttpRequest, declared: int) -> JsonResponse:
    """A body whose Content-Length is past the cap (chat.core.body_limits): refused unread, audited."""
    refused = uploads.too_large(declared)
    audit.record("upload_rejected", request=request, verdict=refused.code, detail={"code": refused.code,
                                                                                  "size": declared})
    return JsonResponse({"error": {"code": refused.code, "message": refused.message}}, status=413)


@audited
@body_limit(lambda: settings.ATTACHMENT_MAX_BYTES, refuse_oversized)
@csrf_exempt  # not unprotected: _upload makes the same check, once the body is parsed (see below)
@login_required  # before the body is read: an anonymous request's body is never parsed
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    """One image per request (the page sends each file it is given); answers with its id.

    CsrfViewMiddleware reads request.POST (for a csrfmiddlewaretoken field) before the view is called,
    so a body that Django's parser refuses would raise there, and the answer would be Django's HTML
    400 page. So the middleware is told to skip this view, which parses the body first, keeping the
    parser's refusal, then runs the middleware's very check (csrf_protect) before anything else: a
    forged request still gets its 403. An anonymous one gets the sign-in redirect before any parsing.
    With the body refused, POST reads empty and the token comes from the X-CSRFToken header, as the
    page sends it."""
    # The per-user limits come before the body is parsed or an image decoded (chat/conversations/image_work.py).
    try:
        image_work.check_upload_rate(request.user.pk)
        with image_work.processing(request.user.pk):
            try:
                request.FILES  # noqa: B018 - parses the body (POST and FILES), as the middleware would
            except UNPARSEABLE_BODY as exc:
                # POST and FILES read empty from now on, instead of raising again (Django's handler does the same).
                request._mark_post_parse_error()
                return _upload(request, refused=exc)
            return _upload(request, refused=None)
    except image_work.ImageWorkLimited as exc:
        return _limited(request, exc)


def _limited(request: HttpRequest, limited: image_work.ImageWorkLimited) -> JsonResponse:
    """An upload over a per-user limit, refused unread (the audit middleware records the request)."""
    response = JsonResponse({"error": {"code": limited.code, "message": limited.message}}, status=429)
    response["Retry-After"] = str(limited.retry_after)
    return response


@csrf_protect
def _upload(request: HttpRequest, refused: Exception | None) -> JsonResponse:
    sent = None if refused is not None else request.FILES.get("file")
    try:
        if refused is not None:
            raise ChatError("unreadable_upload", _("The upload could not be read. Send one image per request, "
                                                   "with a file name of ordinary length."))
        if sent is None:
            raise ChatError("no_file", _("Choose an image to attach."))
        uploads.check_size(sent.size)  # before reading it into memory
        raw = sent.read()
        image_work.charge_pixels(request.user.pk, uploads.declared_pixels(raw))  # before any decoding
        attachment = uploads.do_upload(request.user, raw)
    except image_work.ImageWorkLimited as exc:
        return _limited(request, exc)
    except ChatError as exc:
        detail = {"code": exc.code, "size": sent.size if sent is not None else 0}
        if refused is not None:
            detail["parser_error"] = f"{type(refused).__name__}: {refused}"[:200]
        audit.record("upload_rejected", request=request, verdict=exc.code, detail=detail)
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
    return JsonResponse(uploads.describe(attachment), status=201)


def _serve(request: HttpRequest, attachment_id, thumbnail: bool) -> HttpResponse:
    try:
        attachment = uploads.get_attachment(request.user, attachment_id)
    except ChatError:
        raise Http404("No such image.") from None
    field = attachment.thumbnail if thumbnail else attachment.file
    extension = field.name.rsplit(".", 1)[-1]
    response = FileResponse(field.open("rb"), content_type="image/webp" if thumbnail else attachment.mime)
    # A fixed, harmless name; shown inline; never sniffed; no script even if opened directly.
    response["Content-Disposition"] = f'inline; filename="image.{extension}"'
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=86400"
    return response


@audited
@login_required
@require_GET
def attachment_file(request: HttpRequest, attachment_id) -> HttpResponse:
    return _serve(request, attachment_id, thumbnail=False)


@audited
@login_required
@require_GET
def attachment_thumbnail(request: HttpRequest, attachment_id) -> HttpResponse:
    return _serve(request, attachment_id, thumbnail=True)
