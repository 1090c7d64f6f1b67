"""`manage.py verify_audit_chain`: recompute the audit log's hash chain; exit 1 at the first broken event."""
from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from chat.audit.chain import verify_chain


class Command(BaseCommand):
    help = "Verify the audit log's hash chain from the latest pruning checkpoint; exit status 1 if it is broken."

    def handle(self, *args: Any, **options: Any) -> None:
        report = verify_chain()
        if report.ok:
            self.stdout.write(str(report))
            return
        self.stderr.write(str(report))
        # Not CommandError: monitoring greps for the line as printed, without a "CommandError:" prefix.
        sys.exit(1)
