"""Drives the console in the system Chromium: an auditor finds a grant and a stream in an event's
access graph, a member is refused another team's stream; every page is saved as a screenshot.

Exit status 77 means Chromium could not start (the calling test skips)."""

import os
import shutil
import sys

from playwright.sync_api import Error, expect, sync_playwright

ENDPOINT = os.environ["FANNER_ENDPOINT"]
OUT = os.environ["FANNER_SCREENSHOTS"]


def sign_in(context, token):
    page = context.new_page()
    page.goto(f"{ENDPOINT}/ui/")
    page.fill("#token", token)
    page.press("#token", "Enter")  # by keyboard, as a user would
    page.wait_for_url(f"{ENDPOINT}/ui/")
    expect(page.locator("h1")).to_have_text("Event catalog")
    return page


def shot(page, name):
    page.screenshot(path=os.path.join(OUT, f"{name}.png"))


def main():
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as p:
        executable = shutil.which("chromium")
        try:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Error as e:
            print(f"Chromium ({executable}) cannot start: {e}", file=sys.stderr)
            return 77
        viewport = {"width": 1280, "height": 800}

        auditor = browser.new_context(viewport=viewport)
        sign_page = auditor.new_page()
        sign_page.goto(f"{ENDPOINT}/ui/")
        shot(sign_page, "01-sign-in")
        page = sign_in(auditor, os.environ["AUDITOR_TOKEN"])
        page.fill("#q", "pii")
        page.press("#q", "Enter")
        expect(page.locator("tbody tr")).to_have_count(1)
        shot(page, "02-catalog-search")

        page.click("text=user_signed_up")
        graph = page.locator("figure.graph svg")
        expect(graph.locator("text", has_text="grant → analytics")).to_have_count(1)
        expect(graph.locator("text", has_text="analytics-users")).to_have_count(1)
        expect(page.locator("table").nth(0)).to_contain_text("Churn model <script>")
        shot(page, "03-event")

        page.goto(f"{ENDPOINT}/ui/access")
        expect(page.locator("table.matrix")).to_contain_text("grant")
        shot(page, "04-access")
        page.goto(f"{ENDPOINT}/ui/review")
        expect(page.locator("h2", has_text="Expiring")).to_have_count(1)
        shot(page, "05-review")
        page.goto(f"{ENDPOINT}/ui/audit?action=grant.create")
        expect(page.locator("p.chain")).to_contain_text("Chain verified")
        shot(page, "06-audit")
        page.goto(f"{ENDPOINT}/ui/streams/analytics-users")
        expect(page.locator("h1")).to_have_text("Stream analytics-users")
        shot(page, "07-stream")
        page.goto(f"{ENDPOINT}/ui/health")
        expect(page.locator("h1")).to_have_text("Pipeline health")
        expect(page.locator("tbody").first).to_contain_text("analytics-users")
        expect(page.locator("tbody").last).to_contain_text("user_signed_up")
        shot(page, "08-health")

        member = browser.new_context(viewport=viewport)
        page = sign_in(member, os.environ["MEMBER_TOKEN"])
        response = page.goto(f"{ENDPOINT}/ui/streams/analytics-users")
        assert response.status == 403, response.status
        expect(page.locator("h1")).to_have_text("Not yours to see")
        shot(page, "09-member-refused")

        page.goto(f"{ENDPOINT}/ui/")
        page.click("text=Sign out")
        expect(page.locator("#token")).to_be_visible()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
