"""Hostile files, made here, sent to /attachments/ and as /v1 image parts: refused clearly, or re-encoded."""
from __future__ import annotations

import base64
import functools
import io
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from chat.accounts import api_keys
from chat.audit.models import AuditEvent
from chat.conversations import uploads
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.worker_routing import Heartbeat
from chat.images import validation as images
from chat.images.validation import declared_size
from deepseek_web.asgi import application
from tests.support.conformance import assert_conforms

VISION = "deepseek-vl"
MAX_BYTES = django_settings.ATTACHMENT_MAX_BYTES
PHP = b"<?php system($_GET['c']); ?>"
SCRIPT = b"<script>alert(document.cookie)</script>"


# ---- the corpus, built in memory --------------------------------------------------------------------
def encode(image: Image.Image, format: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible pixels, so that a cut file loses image data, not just its end."""
    return Image.frombytes("RGB", size, random.Random(3).randbytes(size[0] * size[1] * 3))


def png() -> bytes:
    return encode(Image.new("RGB", (16, 16), "red"), "PNG")


def jpeg() -> bytes:
    return encode(Image.new("RGB", (16, 16), "blue"), "JPEG")


def gif() -> bytes:
    return encode(Image.new("P", (4, 4)), "GIF")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    position, found = 8, []
    while position < len(raw):
        (length,) = struct.unpack(">I", raw[position:position + 4])
        found.append((raw[position + 4:position + 8], raw[position + 8:position + 8 + length]))
        position += 12 + length
    return found


def with_chunks(raw: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    """The PNG with chunks added after IHDR, every CRC right."""
    parts = chunks(raw)
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(k, d) for k, d in [parts[0], *extra, *parts[1:]])


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png_with_idat_cut_short() -> bytes:
    parts = chunks(encode(noise((64, 64)), "PNG"))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(k, d[: len(d) // 2] if k == b"IDAT" else d) for k, d in parts)


def jpeg_claiming(width: int, height: int) -> bytes:
    raw = jpeg()
    sof = raw.index(b"\xff\xc0")
    return raw[:sof + 5] + struct.pack(">HH", height, width) + raw[sof + 9:]


def webp_canvas(width: int, height: int) -> bytes:
    body = (b"WEBPVP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little"))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_screen(width: int, height: int) -> bytes:
    raw = gif()
    return raw[:6] + struct.pack("<HH", width, height) + raw[10:]


def gif_of_frames(count: int) -> bytes:
    """The same tiny frame `count` times over (Pillow's encoder would merge them)."""
    raw = gif()
    start = raw.index(b",")
    return raw[:start] + raw[start:-1] * count + b";"


def zip_file() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("evil.html", SCRIPT)
    return out.getvalue()


def exif_segment(tiff: bytes) -> bytes:
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def jpeg_with(*segments: bytes) -> bytes:
    raw = jpeg()
    return raw[:2] + b"".join(segments) + raw[2:]


def exif_that_loops() -> bytes:
    """IFD0 names itself as its Exif IFD, with an Orientation of 9 (there are 8)."""
    ifd = (struct.pack("<H", 2) + struct.pack("<HHII", 0x0112, 3, 1, 9) + struct.pack("<HHII", 0x8769, 4, 1, 8)
           + struct.pack("<I", 8))
    return jpeg_with(exif_segment(b"II*\x00" + struct.pack("<I", 8) + ifd))


def exif_pointing_past_the_end() -> bytes:
    ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x010E, 2, 0xFFFFFF, 0x7FFFFFF0) + struct.pack(">I", 0xFFFFFFF0)
    return jpeg_with(exif_segment(b"MM\x00*" + struct.pack(">I", 8) + ifd))


def gif_javascript_polyglot() -> bytes:
    """A GIF 10,799 pixels wide starts "GIF89a/*": close the comment after the trailer and it is also a script."""
    raw = encode(Image.new("P", (0x2A2F, 1)), "GIF")
    assert raw[6:8] == b"/*"
    return raw + b"*/=alert(document.cookie)//"


def filled_to_the_limit(head: bytes, step: bytes, tail: bytes) -> bytes:
    return head + step * ((MAX_BYTES - len(head) - len(tail)) // len(step)) + tail


@dataclass(frozen=True)
class Sample:
    build: Callable[[], bytes]
    code: str | None  # the refusal; None when the file is a real image, stored re-encoded
    payload: bytes = b""  # what must not survive into the stored bytes


CORPUS: dict[str, Sample] = {
    # Not images at all, whatever their name or type says.
    "a ZIP named photo.png": Sample(zip_file, "not_an_image"),
    "an SVG with a script": Sample(lambda: b'<svg xmlns="http://www.w3.org/2000/svg">' + SCRIPT + b"</svg>",
                                   "not_an_image"),
    "an HTML page": Sample(lambda: b"<!doctype html><html><body>" + SCRIPT + b"</body></html>", "not_an_image"),
    "a PHP script": Sample(lambda: PHP, "not_an_image"),
    "a TIFF": Sample(lambda: encode(Image.new("RGB", (8, 8)), "TIFF"), "not_an_image"),
    "a 0-byte file": Sample(lambda: b"", "empty_file"),
    "a 1-byte file": Sample(lambda: b"\x89", "not_an_image"),
    "a file one byte over the limit": Sample(lambda: png() + bytes(MAX_BYTES + 1 - len(png())), "too_large"),
    # Damaged or lying headers.
    "a PNG whose IDAT is cut short, CRCs intact": Sample(png_with_idat_cut_short, "corrupt_image"),
    "a JPEG cut after 300 bytes": Sample(lambda: encode(noise((64, 64)), "JPEG")[:300], "corrupt_image"),
    "a JPEG claiming 0 × 0 pixels": Sample(lambda: jpeg_claiming(0, 0), "not_an_image"),
    "a WebP whose VP8 frame is zeros": Sample(
        lambda: b"RIFF" + struct.pack("<I", 100) + b"WEBPVP8 " + struct.pack("<I", 80) + bytes(80), "corrupt_image"),
    # Decompression bombs: huge in the header, tiny on disk.
    "a 65,500² JPEG in 600 bytes": Sample(lambda: jpeg_claiming(65_500, 65_500), "too_many_pixels"),
    "a 16,383² WebP canvas in 30 bytes": Sample(lambda: webp_canvas(16_383, 16_383), "too_many_pixels"),
    "a 65,535² GIF screen": Sample(lambda: gif_screen(65_535, 65_535), "too_many_pixels"),
    "a 12,000 × 3,334 PNG, just over the pixel limit": Sample(lambda: png_header_only(12_000, 3_334),
                                                              "too_many_pixels"),
    "an iCCP profile inflating to 50 MB": Sample(
        lambda: with_chunks(png(), (b"iCCP", b"bomb\x00\x00" + zlib.compress(bytes(50_000_000), 9))),
        "corrupt_image"),
    "a zTXt chunk inflating to 50 MB": Sample(
        lambda: with_chunks(png(), (b"zTXt", b"bomb\x00\x00" + zlib.compress(bytes(50_000_000), 9))),
        "corrupt_image"),
    "a GIF of 5,000 frames": Sample(lambda: gif_of_frames(5_000), "too_many_frames"),
    "an APNG claiming 2,147,483,647 frames": Sample(
        lambda: with_chunks(png(), (b"acTL", struct.pack(">II", 2**31 - 1, 0))), "too_many_frames"),
    # CPU bombs: structure Pillow walks in Python, a step at a time (10 to 60 s each before images.py counted it).
    "10 MB of empty PNG chunks": Sample(
        lambda: filled_to_the_limit(png()[:33], chunk(b"zzZz", b""), png()[33:]), "corrupt_image"),
    "10 MB of JPEG fill bytes": Sample(lambda: filled_to_the_limit(jpeg()[:2], b"\xff", jpeg()[2:]),
                                       "corrupt_image"),
    "10 MB of empty JPEG comments": Sample(lambda: filled_to_the_limit(jpeg()[:2], b"\xff\xfe\x00\x02", jpeg()[2:]),
                                           "corrupt_image"),
    "10 MB of empty GIF comment blocks": Sample(
        lambda: filled_to_the_limit(gif()[:gif().index(b",")], b"!\xfe\x00", gif()[gif().index(b","):]),
        "corrupt_image"),
    # Real images carrying something else: stored, but only as our encoder's pixels.
    "a PNG with PHP in tEXt, zTXt, iTXt and after IEND": Sample(
        lambda: with_chunks(png(), (b"tEXt", b"Comment\x00" + PHP), (b"zTXt", b"Code\x00\x00" + zlib.compress(PHP)),
                            (b"iTXt", b"Code\x00\x00\x00\x00\x00" + PHP)) + PHP, None, b"<?php"),
    "a JPEG with PHP in a comment segment": Sample(
        lambda: jpeg_with(b"\xff\xfe" + struct.pack(">H", len(PHP) + 2) + PHP), None, b"<?php"),
    "a GIF that is also JavaScript": Sample(gif_javascript_polyglot, None, b"alert("),
    "a JPEG with 190 KB of EXIF": Sample(
        lambda: jpeg_with(*[exif_segment(b"II*\x00\x08\x00\x00\x00" + b"EVIL" * 16_000)] * 3), None, b"EVIL"),
    "a JPEG whose EXIF loops, orientation 9": Sample(exif_that_loops, None, b"Exif"),
    "a JPEG whose EXIF offsets point past the end": Sample(exif_pointing_past_the_end, None, b"Exif"),
    "a PNG with a malformed eXIf chunk": Sample(
        lambda: with_chunks(png(), (b"eXIf", b"MM\x00*\x00\x00\x00\x08\xff\xff" + b"EVIL" * 100)), None, b"EVIL"),
}


@functools.cache
def built(name: str) -> bytes:
    return CORPUS[name].build()


REFUSED = [name for name, sample in CORPUS.items() if sample.code]
ACCEPTED = [name for name, sample in CORPUS.items() if not sample.code]


# ---- the CPU bombs, at the limit and one step past it ---------------------------------------------
def png_with_empty_chunks(count: int) -> bytes:
    return png()[:33] + chunk(b"zzZz", b"") * count + png()[33:]


def jpeg_with_fill_bytes(count: int) -> bytes:
    return jpeg()[:2] + b"\xff" * count + jpeg()[2:]


def gif_with_stray_bytes(count: int) -> bytes:
    """Bytes that are no block at all: Pillow skips them one at a time."""
    start = gif().index(b",")
    return gif()[:start] + b"\x00" * count + gif()[start:]


@pytest.mark.parametrize(("grow", "steps", "limit"), [
    (png_with_empty_chunks, images._png_chunks, images.MAX_PNG_CHUNKS),
    (jpeg_with_fill_bytes, images._jpeg_header_steps, images.MAX_JPEG_HEADER_STEPS),
    (gif_with_stray_bytes, images._gif_steps, images.MAX_GIF_STEPS),
], ids=["PNG chunks", "JPEG header steps", "GIF steps"])
def test_it_walks_up_to_the_step_limit_and_refuses_one_step_more_at_once(grow, steps, limit):
    # Given a file of the format grown to exactly the limit, and one grown a step past it
    base = steps(grow(0), 10**9)
    at_limit, past_it = grow(limit - base), grow(limit - base + 1)
    assert steps(at_limit, 10**9) == limit
    # Then the first is still an image, and the second is refused before Pillow walks any of it
    assert images.validate_image(at_limit).width > 0
    started = time.monotonic()
    with pytest.raises(images.ImageRejected) as refused:
        images.validate_image(past_it)
    assert refused.value.code == "corrupt_image" and time.monotonic() - started < 0.5


# ---- shared checks -------------------------------------------------------------------------------------
@pytest.fixture
def owner(django_user_model):
    """A user with no password: hashing one costs more than the test."""
    user = django_user_model(username="corpus-owner")
    user.set_unusable_password()
    user.save()
    return user


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def stored_files(media) -> list:
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


def assert_nothing_stored(media) -> None:
    assert Attachment.objects.count() == 0, "a refused file left an Attachment row"
    assert stored_files(media) == [], "a refused file left a file in MEDIA_ROOT"


def assert_re_encoded(attachment: Attachment, payload: bytes) -> None:
    """The stored file is our encoder's output: it opens as what the row says, and carries nothing else."""
    with attachment.file.open("rb") as handle:
        stored = handle.read()
    if payload:
        assert payload not in stored
    assert b"Exif" not in stored and b"tEXt" not in stored and b"<?php" not in stored
    decoded = Image.open(io.BytesIO(stored))
    decoded.load()
    assert (Image.MIME[decoded.format], decoded.size) == (attachment.mime, (attachment.width, attachment.height))
    assert images.validate_image(stored).data == stored, "storing our own output again would change it"


# ---- /attachments/ -----------------------------------------------------------------------------------
def upload(client, raw: bytes, name: str = "photo.png", content_type: str = "image/png"):
    return client.post("/attachments/", {"file": SimpleUploadedFile(name, raw, content_type)})


@pytest.mark.django_db
@pytest.mark.parametrize("name", REFUSED)
def test_the_upload_view_refuses_each_hostile_file_clearly_and_stores_nothing(client, owner, media, name):
    # Given a signed-in user and one file of the corpus, sent as a PNG
    client.force_login(owner)
    sample = CORPUS[name]
    raw = built(name)
    # When it is uploaded
    started = time.monotonic()
    response = upload(client, raw)
    # Then it is refused for its reason, in JSON, quickly, and nothing is kept
    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == sample.code and error["message"].endswith(".")
    assert time.monotonic() - started < 5
    assert_nothing_stored(media)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ACCEPTED)
def test_the_upload_view_keeps_only_the_pixels_of_a_real_image_carrying_a_payload(client, owner, media, name):
    client.force_login(owner)
    sample = CORPUS[name]
    response = upload(client, built(name), name="shell.php", content_type="application/x-php")
    assert response.status_code == 201, response.content[:200]
    attachment = Attachment.objects.get(id=response.json()["id"])
    assert_re_encoded(attachment, sample.payload)
    assert len(stored_files(media)) == 2  # the image and its thumbnail


HOSTILE_NAMES = [
    "../../../../etc/passwd", "..\\..\\..\\windows\\win.ini", "/absolute/path.png", "shell.php", "shell.php.png",
    "x" * 1000 + ".png", "photo.png\x00.php", "évil\u202egnp.php", "con.png", ".htaccess", "photo.svg",
]
CONTENT_TYPES = ["text/html", "application/x-php", "image/svg+xml", "application/octet-stream", "image/png; x=y",
                 "nonsense", "image/gif"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_client_file_name_never_reaches_the_storage(client, owner, media, name):
    client.force_login(owner)
    content_type = CONTENT_TYPES[HOSTILE_NAMES.index(name) % len(CONTENT_TYPES)]
    response = upload(client, png(), name=name, content_type=content_type)
    assert response.status_code == 201, response.content[:200]
    attachment = Attachment.objects.get(id=response.json()["id"])
    assert attachment.mime == "image/png"
    assert attachment.file.name.startswith("attachments/") and attachment.file.name.endswith(".png")
    files = stored_files(media)
    assert len(files) == 2 and all(media in path.parents for path in files)
    assert not any(part in attachment.file.name for part in ("passwd", "win.ini", "php", "htaccess", "svg", ".."))
    assert client.get(response.json()["url"])["Content-Disposition"] == 'inline; filename="image.png"'


@pytest.mark.django_db
def test_a_post_without_a_file_or_with_the_wrong_field_is_refused(client, owner, media):
    client.force_login(owner)
    for body in ({}, {"image": SimpleUploadedFile("a.png", png(), "image/png")}, {"file": "not a file"}):
        response = client.post("/attachments/", body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "no_file"
    assert_nothing_stored(media)


def multipart(disposition: bytes, body: bytes, parts: int = 1) -> bytes:
    part = b"--XyZ\r\nContent-Disposition: form-data; " + disposition + b"\r\nContent-Type: image/png\r\n\r\n" + body
    return (part + b"\r\n") * parts + b"--XyZ--\r\n"


# Requests whose multipart body the browser's form would never send, written byte for byte.
RAW_BODIES = {
    "a file named .": (multipart(b'name="file"; filename="."', png()), 400),
    "a file named ../..": (multipart(b'name="file"; filename="../.."', png()), 400),
    "a file name with a NUL": (multipart(b'name="file"; filename="a\x00.php"', png()), 201),
    "a file name in RFC 2231 with %00 and ../": (
        multipart(b"name=\"file\"; filename*=UTF-8''%2e%2e%2f%00evil.png", png()), 201),
    "a file name that is not UTF-8": (multipart(b'name="file"; filename="\xff\xfe.png"', png()), 400),
    "an empty file name": (multipart(b'name="file"; filename=""', png()), 400),
    "a part with no file name": (multipart(b'name="file"', png()), 400),
    "a body cut before its last boundary": (multipart(b'name="file"; filename="a.png"', png())[:-30], 400),
    "two files in one field": (multipart(b'name="file"; filename="a.png"', png(), parts=2), 201),
    "a 100 KB file name": (multipart(b'name="file"; filename="' + b"x" * 100_000 + b'.png"', png()), 400),
    "200 files": (multipart(b'name="f"; filename="a.png"', b"x", parts=200), 400),
    "bytes that are not multipart": (b"\x00\xff" * 100, 400),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_a_hand_made_multipart_body_gets_a_4xx_or_a_stored_png_never_a_500(client, owner, media, name):
    client.force_login(owner)
    body, status = RAW_BODIES[name]
    response = client.post("/attachments/", data=body, content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == status, response.content[:200]
    if status == 201:
        attachment = Attachment.objects.get(id=response.json()["id"])
        assert attachment.file.name.startswith("attachments/") and attachment.file.name.endswith(".png")
    else:
        assert_nothing_stored(media)


UNPARSEABLE = ["a 100 KB file name", "200 files"]  # Django's parser itself refuses these


def assert_refused_as_unreadable(response, owner, media) -> None:
    """The view's JSON error, the audit trace every refused upload leaves, and nothing kept."""
    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "unreadable_upload" and error["message"].endswith(".")
    [event] = AuditEvent.objects.filter(action="upload_rejected")
    assert event.actor_id == owner.id and event.verdict == "unreadable_upload"
    assert_nothing_stored(media)
    assert (Conversation.objects.count(), Message.objects.count()) == (0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("name", UNPARSEABLE)
def test_a_multipart_body_django_cannot_parse_is_refused_in_json(client, owner, media, name):
    client.force_login(owner)
    response = client.post("/attachments/", data=RAW_BODIES[name][0], content_type="multipart/form-data; boundary=XyZ")
    assert_refused_as_unreadable(response, owner, media)


CSRF_SECRET = "s" * 32


def csrf_client(owner) -> Client:
    """A client that checks CSRF, as a browser meets it: CsrfViewMiddleware reads request.POST, so it
    parses the body before any view is called."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    client.cookies[django_settings.CSRF_COOKIE_NAME] = CSRF_SECRET
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("name", UNPARSEABLE)
def test_with_csrf_checked_a_body_django_cannot_parse_is_still_refused_in_json(owner, media, name):
    # The page sends its token in the X-CSRFToken header, which stays readable when the body is not
    response = csrf_client(owner).post("/attachments/", data=RAW_BODIES[name][0],
                                       content_type="multipart/form-data; boundary=XyZ", HTTP_X_CSRFTOKEN=CSRF_SECRET)
    assert_refused_as_unreadable(response, owner, media)


@pytest.mark.django_db
@pytest.mark.parametrize("name", UNPARSEABLE)
def test_without_its_csrf_token_a_body_django_cannot_parse_is_still_forbidden(owner, media, name):
    response = csrf_client(owner).post("/attachments/", data=RAW_BODIES[name][0],
                                       content_type="multipart/form-data; boundary=XyZ")
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action="upload_rejected").exists()
    assert_nothing_stored(media)


@pytest.mark.django_db
def test_with_csrf_checked_an_upload_still_works_and_a_forged_one_is_forbidden(owner, media):
    client = csrf_client(owner)
    sent = {"file": SimpleUploadedFile("a.png", png(), "image/png")}
    assert client.post("/attachments/", sent).status_code == 403
    assert_nothing_stored(media)
    sent = {"file": SimpleUploadedFile("a.png", png(), "image/png")}
    response = client.post("/attachments/", sent, HTTP_X_CSRFTOKEN=CSRF_SECRET)
    assert response.status_code == 201, response.content[:200]
    assert Attachment.objects.filter(id=response.json()["id"], owner=owner).exists()


# ---- /v1/chat/completions with image_url parts ------------------------------------------------------
@pytest.fixture
def api(owner, settings, redis_url):
    settings.API_REQUESTS_PER_MINUTE = settings.API_CONCURRENT_REQUESTS = settings.API_TOKENS_PER_DAY = 0
    # Hostile images up to ATTACHMENT_MAX_BYTES + 1, base64-encoded: their own checks are under test, not the
    # body cap (tests/app/test_web_image_work.py tests that).
    settings.API_MAX_BODY_BYTES = 64 * 1024 * 1024
    key = api_keys.do_create_key(owner, "corpus")[1]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver",
                             headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture
def worker_alive(redis_url):
    """A heartbeat for the vision model's queue, as a worker sends: the request gets as far as its images."""
    beat = Heartbeat("fake-worker@corpus", [f"model.{VISION}"]).start()
    yield
    beat.stop()


def ask_about(raw: bytes, mime: str = "image/png") -> dict:
    url = f"data:{mime};base64,{base64.b64encode(raw).decode()}"
    return {"model": VISION, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def rows() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Attachment.objects.count()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", REFUSED)
async def test_the_api_refuses_each_hostile_image_part_clearly_and_stores_nothing(api, worker_alive, media, name):
    sample = CORPUS[name]
    response = await api.post("/v1/chat/completions", json=ask_about(built(name)))
    body = response.json()
    assert response.status_code == (413 if sample.code == "too_large" else 400), body
    assert_conforms("ErrorResponse", body)
    assert body["error"]["code"] == sample.code and body["error"]["param"] == "messages[0].content"
    assert await sync_to_async(rows)() == (0, 0, 0)
    assert stored_files(media) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ACCEPTED)
async def test_the_api_keeps_only_the_pixels_of_a_real_image_carrying_a_payload(api, worker_alive, media, settings,
                                                                                 name):
    settings.API_QUEUE_TIMEOUT_SECONDS = 1.0  # no worker reads the queue: the answer times out, the image stays
    sample = CORPUS[name]
    response = await api.post("/v1/chat/completions", json=ask_about(built(name), mime="text/html"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "queue_timeout"
    attachment = await sync_to_async(Attachment.objects.select_related("message").get)()
    assert attachment.message.role == "user"
    await sync_to_async(assert_re_encoded)(attachment, sample.payload)


@pytest.fixture
def no_worker(redis_url):
    """No worker heartbeat left by earlier tests: nobody serves the vision model."""
    from chat.core.redis_server import shared_client

    client = shared_client(redis_url)
    for key in client.scan_iter("deepseek:workers:*"):
        client.delete(key)


@pytest.mark.django_db(transaction=True)
async def test_with_no_worker_a_hostile_image_is_refused_for_its_own_reason_and_nothing_is_stored(api, no_worker,
                                                                                                  media):
    # What the bytes and the header show is checked before the worker: such an image gets its 4xx, not a 503 to
    # retry in vain. What only decoding shows waits for a worker: nothing is decoded for a request none could answer.
    for name in REFUSED:
        sample = CORPUS[name]
        response = await api.post("/v1/chat/completions", json=ask_about(built(name)))
        body = response.json()
        assert_conforms("ErrorResponse", body)
        if not _refused_by_its_header(built(name)):
            assert (response.status_code, body["error"]["code"]) == (503, "no_worker"), (name, body)
            continue
        assert response.status_code == (413 if sample.code == "too_large" else 400), (name, body)
        assert body["error"]["code"] == sample.code and body["error"]["param"] == "messages[0].content", name
    assert await sync_to_async(rows)() == (0, 0, 0) and stored_files(media) == []


def _refused_by_its_header(raw: bytes) -> bool:
    try:
        declared_size(raw, uploads.limits())
    except images.ImageRejected:
        return True
    return False


BAD_DATA_URLS = {
    "not base64": ("data:image/png,rawnotbase64", "invalid_image_url"),
    "broken base64": ("data:image/png;base64,!!!notbase64", "invalid_image_url"),
    "base64 of text": ("data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(), "not_an_image"),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(BAD_DATA_URLS))
async def test_with_no_worker_an_invalid_image_data_url_gets_its_400_not_a_503(api, no_worker, media, name):
    url, code = BAD_DATA_URLS[name]
    response = await api.post("/v1/chat/completions", json={"model": VISION, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    body = response.json()
    assert response.status_code == 400, body
    assert_conforms("ErrorResponse", body)
    assert body["error"]["code"] == code and body["error"]["param"] == "messages[0].content"
    assert body["error"]["message"].endswith(".")
    assert await sync_to_async(rows)() == (0, 0, 0) and stored_files(media) == []


@pytest.mark.django_db(transaction=True)
async def test_with_no_worker_a_valid_image_still_gets_the_503_and_nothing_is_stored(api, no_worker, media):
    response = await api.post("/v1/chat/completions", json=ask_about(png()))
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
    assert await sync_to_async(rows)() == (0, 0, 0) and stored_files(media) == []
