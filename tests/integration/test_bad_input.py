"""Bad input is refused at the door, on SQLite and PostgreSQL: one clear line (CLI, exit 2) or a 422/413/404/405 in
hitl's error shape (HTTP, a live ``hitl serve``), and not one row written.

Covers NaN and infinities in every JSON option and body, request bodies that are not strict JSON (invalid UTF-8,
malformed, 100,000 levels deep, 20 MB streamed without a length), unknown routes and methods, wait durations
that cannot be (checked when the run starts, not at its wait), and non-ASCII text printed as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.support import ApiServer, Stack, start_gate

pytestmark = pytest.mark.integration

ALL = ("read", "start", "decide", "cancel", "delegate")
NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]


def row_counts() -> dict[str, int]:
    """The number of rows in every hitl table (the test process points at the stack's database)."""
    from approvals.models import Base
    from hitl.infra.db import session_scope

    with session_scope() as s:
        return {t.name: int(s.scalar(select(func.count()).select_from(t)) or 0) for t in Base.metadata.sorted_tables}


def the_error(res: httpx.Response) -> dict[str, Any]:
    """The ``error`` of a response in hitl's shape (and nothing else in the body: no FastAPI ``detail``)."""
    body = res.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "status", "details"}, body
    assert body["error"]["status"] == res.status_code
    return dict(body["error"])


@pytest.fixture(scope="module", autouse=True)
def _closed_connections() -> Iterator[None]:
    """Close this process's pooled connections after the module (row_counts opens them)."""
    yield
    from hitl.infra import db

    db.reset_engine()


@pytest.fixture(scope="module")
def client(api: ApiServer) -> httpx.Client:
    return api.client(api.key("door", *ALL))


@pytest.fixture(scope="module")
def pending(client: httpx.Client) -> dict[str, Any]:
    """A pending approval of a gate run whose subject holds non-ASCII text."""
    _, approval = start_gate(client, title="潮の満ち引き", who="Zoë")
    return approval


@pytest.fixture
def unchanged(pending: dict[str, Any]) -> Iterator[None]:
    """Assert that the test wrote no row in any hitl table."""
    before = row_counts()
    yield
    assert row_counts() == before


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("token", NOT_FINITE)
@pytest.mark.usefixtures("unchanged")
def test_cli_refuses_non_finite_numbers_in_every_json_option(stack: Stack, pending: dict[str, Any], token: str) -> None:
    shown = "1e999" if token == "1e999" else token
    for args, option in (
        (["start", "gate", "--payload", f'{{"n": {token}}}'], "--payload"),
        (["approve", pending["id"], "--by", "alice", "--data", f'{{"score": [1, {token}]}}'], "--data"),
        (["reject", pending["id"], "--by", "alice", "--reason", "no", "--data", f'{{"x": {token}}}'], "--data"),
        (["approvals", "create", "early", "--idempotency-key", "k1", "--subject", token], "--subject"),
    ):
        res = stack.cli(*args)
        assert (res.code, res.out, res.err) == (2, "", f"error: {option} holds {shown}; JSON numbers must be finite\n")
    assert stack.cli("approvals", "show", pending["id"], "--json").json()["status"] == "pending"


@pytest.mark.usefixtures("unchanged")
def test_cli_refuses_documents_that_are_not_strict_json(stack: Stack, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"title": "Zoë"}'.encode("latin-1"))
    for path, message in (
        (deep, "error: --payload is nested more than 100 levels deep"),
        (latin1, "error: --payload is not valid UTF-8 (byte 13)"),
    ):
        res = stack.cli("start", "gate", "--payload", f"@{path}")
        assert (res.code, res.err) == (2, message + "\n")


BAD_TIMEOUTS = [
    ("999999999w", "a duration must be at most ten years, not '999999999w'"),
    ("soon", "not a duration: 'soon' (use seconds or 30s, 15m, 1h, 2d, 1w)"),
    ("-5m", "not a duration: '-5m' (use seconds or 30s, 15m, 1h, 2d, 1w)"),
    (0, "a duration must be positive, not 0"),
    (4e8, "a duration must be at most ten years, not 400000000.0"),
]


@pytest.mark.parametrize(("timeout", "message"), BAD_TIMEOUTS)
@pytest.mark.usefixtures("unchanged")
def test_cli_start_refuses_bad_wait_durations_before_anything_is_stored(
    stack: Stack, timeout: Any, message: str
) -> None:
    import json

    for option in ("timeout", "remind_after"):
        res = stack.cli("start", "gate", "--payload", json.dumps({option: timeout}))
        assert (res.code, res.out, res.err) == (2, "", f"error: {message}\n")


@pytest.mark.usefixtures("unchanged")
def test_cli_refuses_non_finite_seconds(stack: Stack, pending: dict[str, Any]) -> None:
    res = stack.cli("approvals", "list", "--older-than", "nan")
    assert (
        res.code == 2 and "Error: Invalid value for '--older-than': 'nan' is not a finite number of seconds" in res.err
    )
    res = stack.cli("approvals", "link", pending["id"], "--for", "bob", "--ttl", "inf")
    assert res.code == 2 and "Error: Invalid value for '--ttl': inf is not in the range 1<=x<=7776000." in res.err


def test_cli_prints_non_ascii_text_as_it_is(stack: Stack, pending: dict[str, Any]) -> None:
    shown = stack.cli("approvals", "show", pending["id"])
    assert shown.code == 0, shown.err
    assert "潮の満ち引き" in shown.out and "Zoë" in shown.out and "\\u" not in shown.out
    as_json = stack.cli("approvals", "show", pending["id"], "--json")
    assert "潮の満ち引き" in as_json.out and "\\u" not in as_json.out
    assert as_json.json()["subject"]["prepared"]["title"] == "潮の満ち引き"
    run = stack.cli("runs", "show", pending["run_id"])
    assert "潮の満ち引き" in run.out and "\\u" not in run.out


# ---------------------------------------------------------------- HTTP


def _post(client: httpx.Client, path: str, content: Any, **headers: str) -> httpx.Response:
    return client.post(path, content=content, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("token", NOT_FINITE)
@pytest.mark.usefixtures("unchanged")
def test_http_refuses_non_finite_numbers_in_every_body(
    client: httpx.Client, pending: dict[str, Any], token: str
) -> None:
    approval = f"/api/v1/approvals/{pending['id']}"
    for path, body in (
        ("/api/v1/runs", f'{{"workflow": "gate", "payload": {{"n": {token}}}}}'),
        (f"{approval}/approve", f'{{"data": {{"score": {token}}}}}'),
        (f"{approval}/reject", f'{{"reason": "no", "data": {{"x": [{token}]}}}}'),
        (f"{approval}/complete", f'{{"outcome": "approved", "data": {{"x": {token}}}}}'),
        ("/api/v1/approvals", f'{{"key": "early", "idempotency_key": "k2", "subject": {token}}}'),
        (f"{approval}/token", f'{{"actor": "bob", "ttl": {token}}}'),
    ):
        res = _post(client, path, body)
        assert res.status_code == 422, (path, res.text)
        assert the_error(res) == {
            "code": "invalid_request",
            "message": f"the request body holds {token}; JSON numbers must be finite",
            "status": 422,
            "details": [],
        }
    assert client.get(approval).json()["status"] == "pending"


@pytest.mark.usefixtures("unchanged")
def test_http_refuses_non_finite_numbers_given_as_strings(client: httpx.Client, pending: dict[str, Any]) -> None:
    res = client.post(f"/api/v1/approvals/{pending['id']}/links", json={"actor": "bob", "ttl": "nan"})
    assert res.status_code == 422 and the_error(res)["code"] == "invalid_request"
    assert "ttl: Input should be a finite number" in the_error(res)["message"]
    res = client.get("/api/v1/approvals", params={"older_than": "inf"})
    assert res.status_code == 422 and "older_than: Input should be a finite number" in the_error(res)["message"]


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    yield b'{"workflow": "gate", "payload": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


@pytest.mark.usefixtures("unchanged")
def test_http_bodies_that_cannot_be_read_get_hitl_errors(client: httpx.Client) -> None:
    cases = [
        (b'{"workflow": "gate", "payload": "Zo\xeb"}', 422, "the request body is not valid UTF-8 (byte 35)"),
        (b'{"workflow": "gate", ', 422, "the request body is not valid JSON: Expecting property name enclosed in"),
        (b"[" * 100_000 + b"]" * 100_000, 422, "the request body is nested more than 100 levels deep"),
        (_chunks(20 << 20), 413, "the request body is larger than 1048576 bytes (HITL_MAX_BODY_BYTES)"),
    ]
    for content, status, message in cases:
        res = _post(client, "/api/v1/runs", content)
        assert res.status_code == status, res.text
        error = the_error(res)
        assert error["code"] == ("payload_too_large" if status == 413 else "invalid_request")
        assert error["message"].startswith(message), error


def test_http_unknown_routes_and_methods_get_hitl_errors(client: httpx.Client, pending: dict[str, Any]) -> None:
    for path in ("/api/v1/nope", "/api/v2/runs", "/favicon.ico"):
        res = client.get(path)
        assert res.status_code == 404
        assert the_error(res) == {
            "code": "route_not_found",
            "message": "no such route; the API is under /api/v1 (see /docs)",
            "status": 404,
            "details": [],
        }
    res = client.delete("/api/v1/runs")
    assert res.status_code == 405 and res.headers["allow"] == "GET, POST"
    assert the_error(res) == {
        "code": "method_not_allowed",
        "message": "DELETE is not allowed on /api/v1/runs; it takes GET, POST",
        "status": 405,
        "details": [],
    }
    res = client.put(f"/api/v1/approvals/{pending['id']}/approve", json={})
    assert res.status_code == 405 and res.headers["allow"] == "POST"
    assert the_error(res)["message"].endswith("/approve; it takes POST")


@pytest.mark.parametrize(("timeout", "message"), BAD_TIMEOUTS)
@pytest.mark.usefixtures("unchanged")
def test_http_start_refuses_bad_wait_durations(client: httpx.Client, timeout: Any, message: str) -> None:
    res = client.post("/api/v1/runs", json={"workflow": "gate", "payload": {"timeout": timeout}})
    assert res.status_code == 422, res.text
    assert the_error(res) == {"code": "invalid_payload", "message": message, "status": 422, "details": []}


def test_http_returns_non_ascii_text_as_it_is(client: httpx.Client, pending: dict[str, Any]) -> None:
    res = client.get(f"/api/v1/approvals/{pending['id']}")
    assert res.json()["subject"]["prepared"] == {"title": "潮の満ち引き", "who": "Zoë"}


def test_python_api_refuses_non_finite_numbers_before_anything_is_stored(stack: Stack, pending: dict[str, Any]) -> None:
    import hitl

    before = row_counts()
    with pytest.raises(hitl.InvalidPayload, match=r"^payload holds NaN or Infinity; JSON numbers must be finite$"):
        hitl.start("gate", {"n": float("inf")})
    assert row_counts() == before
    with pytest.raises(hitl.InvalidPayload, match=r"^decision data holds NaN or Infinity; JSON numbers must be finite"):
        hitl.approve(pending["id"], actor="alice", data={"score": float("nan")})
    assert hitl.get_approval(pending["id"]).status == "pending"
