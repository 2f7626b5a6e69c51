"""The HTTP API against a live ``hitl serve`` process, with a real worker and beat, on SQLite and PostgreSQL.

Every request goes over TCP to the server process, as a web app's would; the CLI makes keys and links as
an operator would.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.flows import effects
from tests.support import ApiServer, start_gate, wait_for

pytestmark = pytest.mark.integration

ALL = ("read", "start", "decide", "cancel", "delegate")


def run_status(client: httpx.Client, run_id: str) -> str:
    return str(client.get(f"/api/v1/runs/{run_id}").json()["status"])


def error_code(res: httpx.Response) -> str:
    body = res.json()
    assert set(body["error"]) >= {"code", "message", "status"}, body
    assert body["error"]["status"] == res.status_code
    return str(body["error"]["code"])


def test_health_needs_no_key(api: ApiServer) -> None:
    res = api.client().get("/api/v1/health")
    assert res.status_code == 200
    assert res.json()["database"] == "ok" and res.json()["broker"] == "ok"


def test_openapi_lists_every_endpoint(api: ApiServer) -> None:
    paths = api.client().get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/approvals",
        "/api/v1/approvals/events",
        "/api/v1/approvals/{approval_id}",
        "/api/v1/approvals/{approval_id}/approve",
        "/api/v1/approvals/{approval_id}/reject",
        "/api/v1/approvals/{approval_id}/complete",
        "/api/v1/approvals/{approval_id}/token",
        "/api/v1/approvals/{approval_id}/links",
        "/api/v1/health",
    ):
        assert path in paths, path


def test_unauthenticated_and_revoked_keys_get_401(api: ApiServer) -> None:
    res = api.client().get("/api/v1/approvals")
    assert res.status_code == 401 and error_code(res) == "unauthenticated"
    assert res.headers["www-authenticate"] == "Bearer"
    assert api.client("hk_nothing_here").get("/api/v1/approvals").status_code == 401
    assert api.client("not-a-key").get("/api/v1/approvals").status_code == 401
    key = api.key("mallory", "read")
    assert api.client(key).get("/api/v1/approvals").status_code == 200
    key_id = key.split("_")[1]
    assert api.stack.cli("keys", "revoke", key_id).code == 0
    assert api.client(key).get("/api/v1/approvals").status_code == 401
    listed = {k["id"]: k for k in api.stack.cli("keys", "list", "--json").json()}
    assert listed[key_id]["revoked_at"] is not None
    assert key not in api.stack.cli("keys", "list", "--json").out  # never printed again


def test_start_approve_and_finish_records_the_key_actor(api: ApiServer) -> None:
    client = api.client(api.key("alice", *ALL))
    run_id, approval = start_gate(client, n=1)
    shown = client.get(f"/api/v1/approvals/{approval['id']}").json()
    assert shown["status"] == "pending" and shown["subject"] == {"prepared": {"n": 1}}
    assert shown["deadline"] and shown["decision_schema"] is None
    res = client.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "ship it"})
    assert res.status_code == 200, res.text
    assert res.json()["decision"]["actor"] == "alice" and res.json()["continuation_sent"] is True
    wait_for(lambda: run_status(client, run_id) == "succeeded", what="the run to finish")
    run = client.get(f"/api/v1/runs/{run_id}").json()
    resolved = [e for e in run["timeline"] if e["kind"] == "input_resolved"]
    assert resolved[0]["detail"]["actor"] == "alice" and resolved[0]["detail"]["channel"] == "http"
    assert len(effects(run_id, "after")) == 1
    again = client.post(f"/api/v1/approvals/{approval['id']}/approve", json={})
    assert again.status_code == 409 and error_code(again) == "already_decided"
    assert len(effects(run_id, "after")) == 1


def test_idempotency_key_returns_the_same_run(api: ApiServer) -> None:
    client = api.client(api.key("svc", "start", "read"))
    body = {"workflow": "wait-last", "payload": {"n": 2}}
    first = client.post("/api/v1/runs", json=body, headers={"Idempotency-Key": "order-77"})
    second = client.post("/api/v1/runs", json=body, headers={"Idempotency-Key": "order-77"})
    assert first.status_code == second.status_code == 201
    assert first.json()["run_id"] == second.json()["run_id"]
    assert len([r for r in client.get("/api/v1/runs").json() if r["idempotency_key"] == "order-77"]) == 1


def test_bad_requests_get_clear_errors_and_change_nothing(api: ApiServer) -> None:
    client = api.client(api.key("svc", *ALL))
    before = len(client.get("/api/v1/runs", params={"limit": 1000}).json())
    unknown = client.post("/api/v1/runs", json={"workflow": "no-such-flow"})
    assert unknown.status_code == 404 and error_code(unknown) == "unknown_workflow"
    bad_input = client.post("/api/v1/runs", json={"workflow": "db-change", "payload": {"table": 3}})
    assert bad_input.status_code == 422 and error_code(bad_input) == "invalid_payload"
    malformed = client.post("/api/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and error_code(malformed) == "invalid_request"
    too_big = client.post("/api/v1/runs", json={"workflow": "gate", "payload": {"blob": "x" * 300_000}})
    assert too_big.status_code == 413 and error_code(too_big) == "payload_too_large"
    over_body = client.post("/api/v1/runs", json={"workflow": "gate", "payload": {"blob": "x" * 1_100_000}})
    assert over_body.status_code == 413 and "HITL_MAX_BODY_BYTES" in over_body.json()["error"]["message"]
    assert len(client.get("/api/v1/runs", params={"limit": 1000}).json()) == before
    missing = client.get("/api/v1/approvals/nope")
    assert missing.status_code == 404 and error_code(missing) == "approval_not_found"
    assert client.post("/api/v1/approvals/nope/approve", json={}).status_code == 404
    assert client.get("/api/v1/runs/nope").status_code == 404
    assert client.get("/api/v1/approvals", params={"cursor": "garbage"}).status_code == 422


def test_a_key_without_decide_scope_gets_403_and_the_attempt_is_recorded(api: ApiServer) -> None:
    admin = api.client(api.key("ops", *ALL))
    run_id, approval = start_gate(admin, n=3)
    viewer = api.client(api.key("victor", "read"))
    res = viewer.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "me too"})
    assert res.status_code == 403 and error_code(res) == "not_allowed"
    assert viewer.post("/api/v1/runs", json={"workflow": "gate"}).status_code == 403
    assert viewer.post(f"/api/v1/runs/{run_id}/cancel").status_code == 403
    assert admin.get(f"/api/v1/approvals/{approval['id']}").json()["status"] == "pending"
    refused = [e for e in admin.get(f"/api/v1/runs/{run_id}").json()["timeline"] if e["kind"] == "decision_refused"]
    assert len(refused) == 1 and refused[0]["detail"]["actor"] == "victor"
    assert "decide" in refused[0]["detail"]["reason"]


def test_typed_decision_is_validated_and_reaches_the_continuation(api: ApiServer) -> None:
    client = api.client(api.key("tess", *ALL))
    run_id, approval = start_gate(client, typed=True)
    schema = client.get(f"/api/v1/approvals/{approval['id']}").json()["decision_schema"]
    assert schema["properties"]["rating"]["maximum"] == 5 and schema["required"] == ["rating"]
    bad = client.post(f"/api/v1/approvals/{approval['id']}/approve", json={"data": {"rating": 9, "channel": "tv"}})
    assert bad.status_code == 422 and error_code(bad) == "invalid_decision"
    assert {d["loc"] for d in bad.json()["error"]["details"]} == {"rating", "channel"}
    assert client.get(f"/api/v1/approvals/{approval['id']}").json()["status"] == "pending"
    assert client.post(f"/api/v1/approvals/{approval['id']}/reject", json={}).status_code == 422  # reason needed
    ok = client.post(
        f"/api/v1/approvals/{approval['id']}/complete",
        json={"outcome": "approved", "data": {"rating": 4, "channel": "newsletter"}},
    )
    assert ok.status_code == 200, ok.text
    wait_for(lambda: effects(run_id, "after"), what="the continuation")
    assert effects(run_id, "after")[0].detail["data"] == {"rating": 4, "channel": "newsletter"}


def test_expired_and_cancelled_approvals_answer_409(api: ApiServer) -> None:
    client = api.client(api.key("ops", *ALL))
    _, expiring = start_gate(client, timeout="2s")
    wait_for(
        lambda: client.get(f"/api/v1/approvals/{expiring['id']}").json()["status"] == "timed_out",
        what="the sweep to time the approval out",
    )
    late = client.post(f"/api/v1/approvals/{expiring['id']}/approve", json={})
    assert late.status_code == 409 and error_code(late) == "approval_expired"
    run_id, approval = start_gate(client)
    cancelled = client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "duplicate"})
    assert cancelled.status_code == 200 and cancelled.json()["cancelled_approvals"] == [approval["id"]]
    res = client.post(f"/api/v1/approvals/{approval['id']}/approve", json={})
    assert res.status_code == 409 and error_code(res) == "approval_cancelled"
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409


def test_list_filters_and_pages(api: ApiServer) -> None:
    client = api.client(api.key("pat", *ALL))
    runs = [start_gate(client, assignees=["page-testers"], i=i)[0] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"assignee": "page-testers", "limit": 2, "workflow": "gate"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/approvals", params=params).json()
        seen += [a["run_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == runs
    assert client.get("/api/v1/approvals", params={"assignee": "nobody-at-all"}).json()["items"] == []
    young = client.get("/api/v1/approvals", params={"assignee": "page-testers", "older_than": 3600}).json()
    assert young["items"] == []


def test_approval_token_reads_and_decides_one_approval_only(api: ApiServer) -> None:
    backend = api.client(api.key("webapp", *ALL))
    run_id, approval = start_gate(backend, n=5)
    _, other = start_gate(backend, n=6)
    res = backend.post(f"/api/v1/approvals/{approval['id']}/token", json={"actor": "carol"})
    assert res.status_code == 201
    card = api.client(res.json()["token"])
    assert card.get(f"/api/v1/approvals/{approval['id']}").status_code == 200
    assert card.get(f"/api/v1/approvals/{other['id']}").status_code == 403
    assert card.get("/api/v1/approvals").status_code == 403
    assert card.get(f"/api/v1/runs/{run_id}").status_code == 403
    assert card.post(f"/api/v1/approvals/{other['id']}/approve", json={}).status_code == 403
    assert backend.get(f"/api/v1/approvals/{other['id']}").json()["status"] == "pending"
    done = card.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "from the card"})
    assert done.status_code == 200 and done.json()["decision"]["actor"] == "carol"
    tampered = res.json()["token"][:-2] + ("AA" if not res.json()["token"].endswith("AA") else "BB")
    assert api.client(tampered).get(f"/api/v1/approvals/{approval['id']}").status_code == 403
    no_delegate = api.client(api.key("dan", "read", "decide"))
    assert no_delegate.post(f"/api/v1/approvals/{other['id']}/token", json={"actor": "x"}).status_code == 403


def test_signed_link_decides_once_for_its_person(api: ApiServer) -> None:
    client = api.client(api.key("ops", *ALL))
    run_id, approval = start_gate(client, n=7)
    made = api.stack.cli("approvals", "link", approval["id"], "--for", "dave", "--json")
    assert made.code == 0, made.err
    url = made.json()["url"]
    assert url.startswith(api.url + "/l/")
    browser = api.client()  # no key: the link is the credential
    page = browser.get(url)
    assert page.status_code == 200 and "Approve as dave" in page.text
    assert client.get(f"/api/v1/approvals/{approval['id']}").json()["status"] == "pending"  # GET decides nothing
    clicked = browser.post(url, data={"comment": "via email"})
    assert clicked.status_code == 200 and "approved by dave" in clicked.text
    decision = client.get(f"/api/v1/approvals/{approval['id']}").json()["decision"]
    assert decision["actor"] == "dave" and decision["channel"] == "link" and decision["comment"] == "via email"
    assert browser.post(url, data={}).status_code == 409
    wait_for(lambda: run_status(client, run_id) == "succeeded", what="the run to finish")
    _, second = start_gate(client, n=8)
    reject_link = client.post(f"/api/v1/approvals/{second['id']}/links", json={"actor": "erin", "action": "reject"})
    assert reject_link.status_code == 201
    forged = reject_link.json()["url"].replace("/l/hlk.", "/l/hlk.x")
    assert browser.post(forged, data={"comment": "no"}).status_code == 403
    short = api.stack.cli("approvals", "link", second["id"], "--for", "erin", "--ttl", "1", "--json").json()["url"]
    time.sleep(1.5)  # the link's lifetime is the thing under test
    expired = browser.post(short, data={})
    assert expired.status_code == 403 and "expired" in expired.text
    assert client.get(f"/api/v1/approvals/{second['id']}").json()["status"] == "pending"


class SseReader(threading.Thread):
    """Reads a server-sent event stream in the background, collecting (id, event, data) tuples."""

    def __init__(self, client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.client, self.path, self.headers = client, path, headers or {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.closing = False
        self.status = 0
        self.content_type = ""
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with self.client.stream("GET", self.path, headers=self.headers, timeout=60) as res:
                self.status = res.status_code
                self.content_type = res.headers.get("content-type", "")
                self.connected.set()
                fields: dict[str, str] = {}
                for line in res.iter_lines():
                    if line == "" and "data" in fields:
                        self.events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                        fields = {}
                    elif line and not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    if self.closing:
                        break
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def close(self) -> None:
        """Stop reading at the next line (a keep-alive comes every few seconds)."""
        self.closing = True
        self.ended.wait(30)

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.events]


def test_run_events_replay_then_follow_live_until_the_run_finishes(api: ApiServer) -> None:
    client = api.client(api.key("sse", *ALL))
    run_id, approval = start_gate(client, n=9)
    reader = SseReader(client, f"/api/v1/runs/{run_id}/events")
    reader.start()
    wait_for(lambda: "waiting_for_input" in reader.kinds(), what="the replayed wait event")
    client.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "live"})
    assert reader.ended.wait(60), reader.kinds()
    assert reader.status == 200 and reader.content_type.startswith("text/event-stream") and reader.error is None
    kinds = reader.kinds()
    assert kinds[0] == "created" and kinds[-1] == "run_finished"
    assert kinds.count("input_resolved") == 1 and "step_finished" in kinds[kinds.index("input_resolved") :]
    ids = [i for i, _, _ in reader.events]
    assert ids == sorted(set(ids))
    resolved = next(d for _, k, d in reader.events if k == "input_resolved")
    assert resolved["detail"]["actor"] == "sse" and resolved["run_id"] == run_id
    # A reconnecting client sends Last-Event-ID and gets only what came after it.
    resumed = SseReader(client, f"/api/v1/runs/{run_id}/events", {"Last-Event-ID": str(ids[-2])})
    resumed.start()
    assert resumed.ended.wait(30)
    assert [i for i, _, _ in resumed.events] == [ids[-1]]


def test_inbox_stream_announces_new_and_resolved_approvals(api: ApiServer) -> None:
    client = api.client(api.key("inbox", *ALL))
    reader = SseReader(client, "/api/v1/approvals/events")
    reader.start()
    assert reader.connected.wait(30)
    run_id, approval = start_gate(client, n=10)
    wait_for(
        lambda: any(k == "waiting_for_input" and d["run_id"] == run_id for _, k, d in reader.events),
        what="waiting_for_input on the inbox stream",
    )
    client.post(f"/api/v1/approvals/{approval['id']}/reject", json={"reason": "off topic"})
    wait_for(
        lambda: any(
            k == "input_resolved" and d["detail"].get("approval_id") == approval["id"] for _, k, d in reader.events
        ),
        what="input_resolved on the inbox stream",
    )
    reader.close()
    assert reader.error is None
    assert "step_finished" not in reader.kinds()  # the inbox hears approval lifecycle only
