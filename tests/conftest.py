"""Shared test set-up: a real Redis (started here when none answers), the demo model, users."""
from __future__ import annotations

import fcntl
import os
import uuid

import pytest

from chat.core.redis_server import PrivateRedis, free_port, is_reachable

# A database of its own on the machine's Redis, so a dev server on /0 is left alone.
# Under pytest-xdist each worker process gets the next database (gw0: /9, gw1: /10, ...), so per-user
# windows and queues of one worker's users never meet another's (their ids repeat across databases).
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{9 + _XDIST_WORKER}")
_private_redis: PrivateRedis | None = None


def _point_at_redis(url: str) -> None:
    """Re-aim the channel layer and the Celery broker (settings were read before conftest)."""
    from channels.layers import channel_layers
    from django.conf import settings

    from deepseek_web.celery import app

    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}]},
        }
    }
    channel_layers.backends.clear()
    app.conf.broker_url = url


def pytest_configure(config: pytest.Config) -> None:
    global _private_redis
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs a loop
    url = TEST_REDIS_URL
    if not is_reachable(url):
        _private_redis = PrivateRedis(free_port()).start()
        url = _private_redis.url
    _point_at_redis(url)
    from django.conf import settings

    # The suite signs up far more users from 127.0.0.1 than a person would; tests/app/test_abuse.py turns it on.
    settings.SIGNUPS_PER_IP_PER_HOUR = 0
    # Its tests send far more messages per user than a person would; tests/app/test_message_limits.py turns
    # these on (and the resilience stack runs with the defaults).
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_ACTIVE_ANSWERS_PER_USER = 0
    # No worker runs in most tests: an API request answers its 503 at once instead of waiting for one
    # (tests/integration/test_api_worker_wait.py turns the wait on).
    settings.API_WORKER_WAIT_SECONDS = 0
    # The suite uploads far more images per user and minute than a person would (and user ids repeat across
    # tests); tests/app/test_web_image_work.py turns it on.
    settings.UPLOADS_PER_MINUTE = 0
    settings.IMAGE_PIXELS_PER_MINUTE = 0
    # The suite makes far more anonymous requests from 127.0.0.1 than a client would; tests that count
    # their audit rows would depend on the minute. tests/app/test_audit_flood.py turns it on.
    settings.AUDIT_ANONYMOUS_EVENTS_PER_MINUTE = 0


TIERS = ("unit", "app", "integration", "browser", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's tier comes from its folder (tests/<tier>/...): `-m unit`, `-m "unit or app"`, ..."""
    root = config.rootpath / "tests"
    for item in items:
        try:
            tier = item.path.relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(tier)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _private_redis is not None:
        _private_redis.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def demo_model_path():
    """The demo chat model, built once (seconds) when the data folder does not have it yet.

    Autouse, so unittest-style classes (the browser tests) get it too."""
    from django.conf import settings
    from django.core.management import call_command

    path = settings.DEMO_MODELS_DIR / "demo-chat"
    settings.DEMO_MODELS_DIR.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's workers start together: one builds, the others wait for it and find them built.
    with open(settings.DEMO_MODELS_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        vision = settings.DEMO_MODELS_DIR / "demo-vision"
        if not (path / "config.json").exists() or not (vision / "config.json").exists():
            call_command("build_demo_models", if_missing=True)
    return path


@pytest.fixture(scope="session")
def demo_vision_path(demo_model_path):
    from django.conf import settings

    return settings.DEMO_MODELS_DIR / "demo-vision"


@pytest.fixture
def make_user(django_user_model):
    def make(name: str | None = None, password: str = "correct horse battery"):
        return django_user_model.objects.create_user(username=name or f"user-{uuid.uuid4().hex[:8]}", password=password)

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def broker(redis_url):
    """The broker's Redis; queued tasks are cleared before and after each test."""
    import redis

    from chat.core.served_models import all_models

    client = redis.Redis.from_url(redis_url)
    queues = [spec.celery_queue for spec in all_models().values()]
    # Forget workers announced by earlier tests, so answers go to the shared queue unless a
    # worker running now announces itself again.
    stale = [*queues, *client.keys("deepseek:workers:*")]
    client.delete(*stale)
    yield client
    client.delete(*queues)
    client.close()
