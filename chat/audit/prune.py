"""Retention: prune() deletes old audit events behind a checkpoint; prune_audit_events is the daily Celery task."""
from __future__ import annotations

import datetime
import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat.audit.chain import lock_chain
from chat.audit.models import AuditCheckpoint, AuditEvent

__all__ = ["prune", "prune_audit_events"]

log = logging.getLogger(__name__)


def prune(older_than_days: int) -> int:
    """Delete the events older than `older_than_days` days, after a checkpoint with the last one's
    hash, so verify_chain() goes on from there. Returns how many were deleted.

    Only a prefix of the chain (in id order) is deleted: an event stamped before the cutoff but after
    a newer one (a clock step back) waits for the next prune."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be 0 or more")
    cutoff = timezone.now() - datetime.timedelta(days=older_than_days)
    with transaction.atomic():
        lock_chain()
        first_kept = (AuditEvent.objects.filter(created_at__gte=cutoff).order_by("id")
                      .values_list("id", flat=True).first())
        doomed = AuditEvent.objects.filter(id__lt=first_kept) if first_kept else AuditEvent.objects.all()
        last = doomed.order_by("-id").values_list("id", "hash").first()
        if last is None:
            return 0
        count = doomed.count()
        AuditCheckpoint.objects.create(cutoff=cutoff, last_event_id=last[0], last_hash=last[1], pruned=count)
        deleted = AuditEvent.objects.prune_through(last[0])
    log.info("Pruned %d audit events older than %s (through event %d)", deleted, cutoff.isoformat(), last[0])
    return deleted


@shared_task(name="chat.audit.prune_audit_events")
def prune_audit_events() -> int:
    """The daily retention task (settings.CELERY_BEAT_SCHEDULE): keeps AUDIT_RETENTION_DAYS days of events."""
    return prune(int(getattr(settings, "AUDIT_RETENTION_DAYS", 365)))
