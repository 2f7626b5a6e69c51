"""The web side as people and tools meet it: the approval inbox in a real headless Chromium, and
schemathesis fuzzing the live API from its OpenAPI spec. Real worker and beat, SQLite, ``hitl serve``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ApiServer, api_server, running_stack, start_gate, wait_for

pytestmark = pytest.mark.acceptance

ALL = ("read", "start", "decide", "cancel", "delegate")
CHROMIUM = os.environ.get("HITL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with running_stack(tmp_path_factory.mktemp("web")) as stack, api_server(stack) as api:
        yield api


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            raise RuntimeError("Chromium is required in CI (apt-get install chromium)")
        pytest.skip("no chromium on this machine")
    return CHROMIUM


def test_schemathesis_finds_no_server_errors(web: ApiServer) -> None:
    """Every operation, fuzzed from the spec (coverage, fuzzing and stateful phases): no 5xx.

    The three event streams are left out: on a real run they stay open until it finishes, which a fuzzer
    reads as a hang; test_api.py covers them.
    """
    key = web.key("fuzzer", *ALL)
    st = str(Path(sys.executable).with_name("st"))
    proc = subprocess.run(
        [
            st,
            "run",
            f"{web.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--exclude-path-regex",
            "/events$",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Tested: 13" in proc.stdout  # the 16 operations minus the 3 streams


def test_inbox_in_chromium_approve_with_the_generated_form_and_see_the_run_finish(
    web: ApiServer, chromium: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    service = web.client(web.key("webapp", *ALL))
    alice_key = web.key("alice", "read", "decide")
    run_id, approval = start_gate(service, typed=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{web.url}/inbox")
            assert page.url.endswith("/inbox/login")  # not signed in yet
            page.fill("#api_key", alice_key)
            page.click("button[type=submit]")
            page.wait_for_url("**/inbox")
            expect(page.locator("#actor")).to_have_text("alice")
            expect(page.locator(f"tr[data-approval='{approval['id']}']")).to_be_visible()

            # The inbox updates live: a run that starts waiting now appears without a reload.
            _, later = start_gate(service, n=2)
            expect(page.locator(f"tr[data-approval='{later['id']}']")).to_be_visible(timeout=30_000)

            page.click(f"a[href='/inbox/approvals/{approval['id']}']")
            expect(page.locator("#subject")).to_contain_text("prepared")
            expect(page.locator("#approval-status")).to_have_text("pending")
            # The form is generated from the wait's decision schema (tests.flows.ReviewForm).
            expect(page.locator("select[name='f.channel'] option")).to_have_count(2)
            assert page.get_attribute("input[name='f.rating']", "max") == "5"
            page.fill("input[name='f.rating']", "4")
            page.select_option("select[name='f.channel']", "newsletter")
            page.check("input[name='f.urgent']")
            page.fill("#comment", "good to go")
            page.click("button.approve")
            expect(page.locator("#approval-status")).to_have_text("approved")
            expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)  # live, over SSE

            page.goto(f"{web.url}/inbox")
            expect(page.locator(f"tr[data-approval='{later['id']}']")).to_be_visible()
            expect(page.locator(f"tr[data-approval='{approval['id']}']")).to_have_count(0)
        finally:
            browser.close()
    decision = service.get(f"/api/v1/approvals/{approval['id']}").json()["decision"]
    assert decision["actor"] == "alice" and decision["channel"] == "inbox" and decision["comment"] == "good to go"
    assert decision["data"] == {"rating": 4, "channel": "newsletter", "urgent": True}
    assert service.get(f"/api/v1/runs/{run_id}").json()["status"] == "succeeded"


def test_inbox_shows_a_refused_decision_without_changing_anything(web: ApiServer, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    service = web.client(web.key("webapp", *ALL))
    viewer_key = web.key("victor", "read")
    _, approval = start_gate(service, n=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{web.url}/inbox/login")
            page.fill("#api_key", viewer_key)
            page.click("button[type=submit]")
            page.goto(f"{web.url}/inbox/approvals/{approval['id']}")
            page.fill("#comment", "trying")
            page.click("button.approve")
            expect(page.locator("#error")).to_contain_text("may not decide")
            expect(page.locator("#approval-status")).to_have_text("pending")
        finally:
            browser.close()
    wait_for(lambda: service.get(f"/api/v1/approvals/{approval['id']}").json()["status"] == "pending")
