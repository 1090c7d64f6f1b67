"""Uploading images and serving them back, to their owner only."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from . import audit, uploads
from .errors import ChatError


@login_required
@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    """One image per request (the page sends each file it is given); answers with its id."""
    sent = request.FILES.get("file")
    try:
        if sent is None:
            raise ChatError("no_file", _("Choose an image to attach."))
        uploads.check_size(sent.size)  # before reading it into memory
        attachment = uploads.do_upload(request.user, sent.read())
    except ChatError as exc:
        audit.record("upload_rejected", request=request, verdict=exc.code,
                     detail={"code": exc.code, "size": sent.size if sent is not None else 0})
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


@login_required
@require_GET
def attachment_file(request: HttpRequest, attachment_id) -> HttpResponse:
    return _serve(request, attachment_id, thumbnail=False)


@login_required
@require_GET
def attachment_thumbnail(request: HttpRequest, attachment_id) -> HttpResponse:
    return _serve(request, attachment_id, thumbnail=True)
