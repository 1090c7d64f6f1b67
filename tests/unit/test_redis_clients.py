"""The one Redis client factory (chat.core.redis_server): one client per URL and timeouts, however called."""
from __future__ import annotations

from chat.core import metrics_snapshots, redis_server

URL = "redis://127.0.0.1:1/0"  # never connected to: clients connect on their first command


def timeouts(client) -> tuple[object, object]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]


def test_one_client_per_url_and_timeouts_however_they_are_passed():
    plain = redis_server.shared_client(URL)
    assert plain is redis_server.shared_client(URL, 5, 2)
    assert plain is redis_server.shared_client(URL, socket_timeout=5.0, socket_connect_timeout=2)
    assert timeouts(plain) == (5, 2)
    patient = redis_server.shared_client(URL, socket_timeout=None)
    assert patient is not plain and timeouts(patient) == (None, 2)


def test_the_settings_client_follows_redis_url_and_metrics_get_short_timeouts(settings):
    settings.REDIS_URL = URL
    assert redis_server.client() is redis_server.shared_client(URL)
    assert metrics_snapshots.client() is redis_server.shared_client(URL, 1, 1)
    assert timeouts(metrics_snapshots.client()) == (1, 1)
