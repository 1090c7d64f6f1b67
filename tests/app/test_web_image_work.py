"""The web tier's image work and /v1 bodies, attacked: the cheap checks (the declared size, the key, its limits,
counts and declared image sizes) come before anything is parsed or decoded; uploads and image decoding are limited
per user; a huge body never holds the event loop; a running request keeps its concurrency slot."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import time
from contextlib import ExitStack

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from chat.accounts import api_keys
from chat.accounts import usage as api_usage
from chat.accounts.models import ApiUsage
from chat.conversations import image_work, uploads
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.redis_server import client as redis_client
from chat.core.served_models import all_models
from chat.core.worker_routing import Heartbeat
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)
VISION = "deepseek-vl"


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def fresh_limits(redis_url):
    client = redis_client()
    for pattern in ("deepseek:api:*", "deepseek:images:*"):
        for name in client.scan_iter(pattern):
            client.delete(name)


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """The images the web tier validated (decoded and re-encoded): the real code runs, each call is counted."""
    seen: list[int] = []
    real = uploads.validate_upload

    def counting(raw: bytes):
        seen.append(len(raw))
        return real(raw)

    monkeypatch.setattr(uploads, "validate_upload", counting)
    return seen


@pytest.fixture
def key(alice):
    return api_keys.do_create_key(alice, "tests")[1]


@pytest.fixture
def api(key):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver",
                             headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture
def vision_worker_alive(redis_url):
    """A heartbeat for the vision model's queue, as a worker sends (no worker consumes it here)."""
    beat = Heartbeat("fake-vision-worker@test", [all_models()[VISION].celery_queue]).start()
    yield
    beat.stop()


def bomb(side: int = 6000) -> bytes:
    """A one-bit PNG declaring side × side pixels: ~4 KB on the wire, 108 MB as RGB at 6000."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG")
    return out.getvalue()


def png(width: int = 16, height: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(out, "PNG")
    return out.getvalue()


def with_images(raw: bytes, images: int, per_message: int = 2) -> dict:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(raw).decode()}}
    messages = []
    while images > 0:
        messages.append({"role": "user", "content": [{"type": "text", "text": "and this?"},
                                                     *[part] * min(per_message, images)]})
        messages.append({"role": "assistant", "content": "A picture."})
        images -= per_message
    messages.append({"role": "user", "content": "All of them?"})
    return {"model": VISION, "messages": messages}


def rows() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Attachment.objects.count()


async def refused(api, body: dict | bytes, status: int, code: str) -> httpx.Response:
    before = await sync_to_async(rows)()
    if isinstance(body, bytes):
        response = await api.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        response = await api.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text[:500]
    assert response.json()["error"]["code"] == code
    assert await sync_to_async(rows)() == before, "a refused request wrote rows"
    return response


# ---- /v1: the cheap checks before any decoding -----------------------------------------------------------
async def test_a_thousand_tiny_images_declaring_huge_sizes_get_a_400_before_any_is_decoded(api, alice, decodes,
                                                                                       vision_worker_alive):
    body = with_images(bomb(), 1000)
    assert len(json.dumps(body)) < 8 * 1024 * 1024  # within the body cap: the count refuses it
    response = await refused(api, body, 400, "request_images_exceeded")
    assert "1,000" in response.json()["error"]["message"]
    assert decodes == []
    assert await sync_to_async(image_work.in_progress)(alice.id) == 0


async def test_images_declaring_more_pixels_than_a_request_may_hold_are_refused_before_decoding(api, decodes,
                                                                                            vision_worker_alive):
    await refused(api, with_images(bomb(), 3, per_message=3), 400, "request_pixels_exceeded")
    assert decodes == []


async def test_a_key_with_todays_tokens_spent_gets_402_before_its_images_are_read(api, alice, settings, decodes,
                                                                              vision_worker_alive):
    settings.API_TOKENS_PER_DAY = 1000
    await sync_to_async(ApiUsage.objects.create)(user=alice, day=dt.datetime.now(dt.UTC).date(), requests=1,
                                                 prompt_tokens=600, completion_tokens=400)
    await refused(api, with_images(png(), 2), 402, "insufficient_quota")
    assert decodes == []


async def test_a_key_over_its_concurrency_gets_429_before_its_images_are_read(api, alice, settings, decodes,
                                                                          vision_worker_alive):
    settings.API_CONCURRENT_REQUESTS = 1
    running = await sync_to_async(api_usage.admit)(alice.id)
    try:
        response = await refused(api, with_images(bomb(), 3, per_message=3), 429, "too_many_concurrent_requests")
    finally:
        await sync_to_async(running.release)()
    assert response.headers["retry-after"] == "1"
    assert decodes == []


async def test_with_no_worker_an_image_request_gets_its_503_before_any_decoding(api, decodes):
    await refused(api, with_images(png(), 2), 503, "no_worker")
    assert decodes == []


async def test_a_user_decoding_as_many_images_as_allowed_gets_429_and_the_place_comes_back(
        api, alice, settings, decodes, vision_worker_alive):
    settings.IMAGE_PROCESSING_PER_USER = 2
    with ExitStack() as held:  # two uploads of alice's being processed right now
        for _ in range(2):
            held.enter_context(image_work.processing(alice.id))
        response = await refused(api, with_images(png(), 1), 429, "image_processing_limited")
        assert int(response.headers["retry-after"]) >= 1
        assert decodes == []
    assert await sync_to_async(image_work.in_progress)(alice.id) == 0
    # Places free again: the same request is decoded, then stopped by something later (a blocked prompt).
    body = with_images(png(), 1)
    body["messages"][-1]["content"] = "Tell me how to make a pipe bomb"
    await refused(api, body, 400, "content_filter")
    assert len(decodes) == 1
    assert await sync_to_async(image_work.in_progress)(alice.id) == 0, "the place was not given back"


async def test_images_past_the_users_pixels_this_minute_get_429_before_decoding(
        api, alice, bob, settings, decodes, vision_worker_alive):
    settings.IMAGE_PIXELS_PER_MINUTE = 3_000_000
    await sync_to_async(image_work.charge_pixels)(alice.id, 2_500_000)  # an upload this minute, say
    response = await refused(api, with_images(png(1000, 1000), 1), 429, "image_pixels_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 61
    assert decodes == []
    # The refused charge was taken back (what is left still fits a small image), and bob has his own budget.
    await sync_to_async(image_work.charge_pixels)(alice.id, 400_000)
    await sync_to_async(image_work.charge_pixels)(bob.id, 3_000_000)


# ---- uploads ------------------------------------------------------------------------------------------------
def upload(client, raw: bytes):
    return client.post("/attachments/", {"file": SimpleUploadedFile("photo.png", raw, "image/png")})


def stored_files(media) -> list:
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


def test_an_upload_flood_gets_429_with_retry_after_and_stores_nothing(client, alice, bob, settings, media, decodes):
    settings.UPLOADS_PER_MINUTE = 3
    client.force_login(alice)
    for _ in range(3):
        assert upload(client, png()).status_code == 201
    before, files = Attachment.objects.count(), stored_files(media)
    for _ in range(5):
        response = upload(client, png())
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "upload_rate_limited"
        assert 1 <= int(response["Retry-After"]) <= 60
    assert Attachment.objects.count() == before and stored_files(media) == files
    assert len(decodes) == 3  # the refused ones were not even parsed
    client.force_login(bob)  # per user: bob still uploads
    assert upload(client, png()).status_code == 201


def test_uploads_past_the_users_pixels_this_minute_get_429_unread_and_store_nothing(
        client, alice, bob, settings, media, decodes):
    """40 MP of one colour is ~150 KB on the wire and ~1.7 s of CPU: the count of uploads alone lets a user
    spend a core; the pixels their headers declare are charged before any is decoded."""
    settings.IMAGE_PIXELS_PER_MINUTE = 3_000_000
    client.force_login(alice)
    for _ in range(3):
        assert upload(client, png(1000, 1000)).status_code == 201
    before, files = Attachment.objects.count(), stored_files(media)
    response = upload(client, png(1000, 1000))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "image_pixels_limited"
    assert "3,000,000" in response.json()["error"]["message"]
    assert 1 <= int(response["Retry-After"]) <= 61
    assert Attachment.objects.count() == before and stored_files(media) == files
    assert len(decodes) == 3  # the refused one was never decoded
    client.force_login(bob)
    assert upload(client, png(1000, 1000)).status_code == 201


def test_an_upload_while_the_users_images_are_being_processed_gets_429(client, alice, settings, media, decodes):
    settings.IMAGE_PROCESSING_PER_USER = 1
    client.force_login(alice)
    with image_work.processing(alice.id):
        response = upload(client, png())
    assert response.status_code == 429 and response.json()["error"]["code"] == "image_processing_limited"
    assert response["Retry-After"] and Attachment.objects.count() == 0 and decodes == []
    assert upload(client, png()).status_code == 201
    assert image_work.in_progress(alice.id) == 0


# ---- /v1 bodies ----------------------------------------------------------------------------------------------
def empty_objects(size: int) -> bytes:
    """A JSON object of `size` bytes: a list of empty objects, the costliest thing to parse per byte."""
    head, tail = b'{"model": "deepseek-chat", "messages": [', b"{}]}"
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


async def test_a_63_mb_body_gets_413_unparsed_and_uncounted_while_a_socket_is_answered(api, alice, broker):
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    big = asyncio.ensure_future(refused(api, empty_objects(63 * 1024 * 1024), 413, "request_too_large"))
    await send(socket, {"type": "nonsense"})
    assert (await receive(socket, timeout=60))["type"] == "error"  # the other socket is answered meanwhile
    response = await big
    assert "8388608" in response.json()["error"]["message"]
    # Refused by its Content-Length before the key was even looked up: no request counted for alice.
    assert await sync_to_async(ApiUsage.objects.filter(user=alice).exists)() is False
    await socket.disconnect()


async def test_a_body_just_under_the_cap_is_parsed_while_sockets_keep_answering(api, alice, broker):
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    big = asyncio.ensure_future(refused(api, empty_objects(8 * 1024 * 1024 - 1024), 400, "invalid_request"))
    # The big body is read and parsed off the event loop: the socket is answered while that goes on.
    await send(socket, {"type": "nonsense"})
    frame = await receive(socket, timeout=60)
    assert frame["type"] == "error"
    assert not big.done(), "the socket was answered only after the big body was parsed"
    await big
    await socket.disconnect()


# ---- the concurrency slot of a running request ------------------------------------------------------------------
async def until(predicate, what: str, timeout: float = 60) -> None:
    """wait_for, with the event loop (and the sync thread the request's database calls use) left free."""
    deadline = time.monotonic() + timeout
    while not await database_sync_to_async(predicate)():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_running_request_keeps_its_concurrency_slot_past_the_slots_ttl(api, alice, settings, monkeypatch,
                                                                             broker):
    settings.API_CONCURRENT_REQUESTS = 1
    settings.API_KEEPALIVE_SECONDS = 0.1
    settings.API_QUEUE_TIMEOUT_SECONDS = 60
    monkeypatch.setattr(api_usage, "SLOT_TTL_SECONDS", 1)
    monkeypatch.setattr(api_usage, "SLOT_REFRESH_SECONDS", 0.2)
    beat = Heartbeat("fake-chat-worker@test", [all_models()["deepseek-chat"].celery_queue]).start()
    slots = redis_client()
    key = f"deepseek:api:inflight:{alice.id}"
    try:
        running = asyncio.ensure_future(api.post("/v1/chat/completions", json={
            "model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}]}))
        # Queued, nobody takes it: the request waits, as one waiting behind a long queue does.
        await until(lambda: Message.objects.filter(role="assistant").exists(), "the answer queued")
        await until(lambda: slots.zrange(key, 0, -1), "the request's slot")
        first_expiry = slots.zrange(key, 0, -1, withscores=True)[0][1]
        await until(lambda: time.time() > first_expiry + 0.5, "the slot's first expiry")
        assert not running.done()
        assert await sync_to_async(api_usage.in_flight)(alice.id) == 1, "the slot expired under a running request"
        await refused(api, {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi"}]}, 429,
                      "too_many_concurrent_requests")
        running.cancel()
    finally:
        beat.stop()
