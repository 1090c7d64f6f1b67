"""The audit log in the admin, in Chromium: a superuser filters and exports it; a signed-up user cannot reach it."""
from __future__ import annotations

import csv
import re

from django.contrib.auth import get_user_model

from chat.audit.admin import CSV_FIELDS
from tests.app.test_audit_admin import LIST, events
from tests.support.browser import PASSWORD, BrowserTestCase


class AuditAdminBrowserTests(BrowserTestCase):
    def test_a_superuser_exports_the_filtered_events_and_a_signed_up_user_cannot_reach_them(self):
        get_user_model().objects.create_superuser("root", password=PASSWORD)
        made = events()
        # A superuser logs into the admin, under the site's strict CSP, and opens the audit log
        context = self.new_context(strict_csp=True, accept_downloads=True)
        page = context.new_page()
        page.goto(f"{self.live_server_url}/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{self.live_server_url}/admin/")
        page.click(f"a[href='{LIST}']")
        page.wait_for_selector("#audit-chain-status >> text=Chain OK")
        assert page.locator("#result_list tbody tr").count() >= 6
        # It filters by an action
        page.locator("#changelist-filter").get_by_role("link", name="Model call", exact=True).click()
        page.wait_for_url(re.compile(r".*action__exact=model_call"))
        assert page.locator("#result_list tbody tr").count() == 2
        # And the CSV it downloads has those rows only
        with page.expect_download() as download:
            page.click("#audit-export")
        with open(download.value.path(), encoding="utf-8", newline="") as file:
            rows = list(csv.reader(file))
        assert rows[0] == list(CSV_FIELDS)
        assert sorted(row[0] for row in rows[1:]) == sorted(str(e.id) for e in made["model_call"])
        assert page.evaluate("window.__cspViolations") == []
        context.close()

        # A user who signs up on the site lands on the admin login page, with no event in sight
        self.sign_up("nora")
        self.page.goto(f"{self.live_server_url}{LIST}")
        assert self.page.url.startswith(f"{self.live_server_url}/admin/login/")
        assert self.page.is_visible("#login-form")
        assert "not authorized" in self.page.inner_text("#content")
        html = self.page.content()
        assert made["model_call"][0].hash not in html and "result_list" not in html
