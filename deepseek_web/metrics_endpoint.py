"""/metrics for Prometheus: who may read it, and what it shows (every process's metrics, the queues)."""
from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from functools import lru_cache

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from chat.core.metrics_snapshots import SharedCollector, ensure_pushing
from chat.core.metrics_snapshots import client as redis_client
from chat.core.served_models import all_models
from chat.core.worker_routing import live_workers, private_queue

log = logging.getLogger(__name__)
# A request that came through a proxy shows the proxy's address, and a proxy on this host would
# make every outside request look local: only a direct request may use the address rule.
_FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def may_read(request: HttpRequest) -> bool:
    """A bearer METRICS_TOKEN (compared in constant time), or a direct request from an allowed network."""
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    if any(header in request.META for header in _FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


class QueueDepthCollector:
    """Answers waiting per model (its shared queue plus its live workers' private queues), and live
    workers per model; read from Redis at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("deepseek_queue_depth", "Answers waiting in a model's queues.", labels=["model"])
        workers = GaugeMetricFamily("deepseek_live_workers", "Workers announcing themselves for a model.",
                                    labels=["model"])
        try:
            for spec in all_models().values():
                live = live_workers(spec.celery_queue, self.client)
                pipe = self.client.pipeline(transaction=False)
                for queue in (spec.celery_queue, *(private_queue(spec.celery_queue, w) for w in live)):
                    pipe.llen(queue)
                depth.add_metric([spec.name], sum(pipe.execute()))
                workers.add_metric([spec.name], len(live))
        except redis.RedisError:
            log.warning("queue depths unreadable: Redis unavailable")
            return
        yield depth
        yield workers


class _Everything:
    def __init__(self, *collectors: object) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()  # type: ignore[attr-defined]


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not may_read(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain; charset=utf-8")
    ensure_pushing()  # from now on other web processes show this one's values too
    client = redis_client()
    body = generate_latest(_Everything(SharedCollector(client), QueueDepthCollector(client)))  # type: ignore[arg-type]
    response = HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
