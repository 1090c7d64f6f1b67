"""`manage.py verify_audit_chain`: recompute the audit log's hash chain; exit 1 at the first broken event.

The chain is keyed: run it with the same AUDIT_CHAIN_KEY (or SECRET_KEY, when that is unset) as the site."""
from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from chat.audit.chain import verify_chain


class Command(BaseCommand):
    help = ("Verify the audit log's keyed hash chain (AUDIT_CHAIN_KEY) from the latest pruning checkpoint; "
            "exit status 1 if it is broken.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = verify_chain()
        if report.ok:
            self.stdout.write(str(report))
            return
        self.stderr.write(str(report))
        # Not CommandError: monitoring greps for the line as printed, without a "CommandError:" prefix.
        sys.exit(1)
