"""The JSON API under ``/api/v1``: runs, approvals, decisions, tokens, links, live events and health.

Each route authenticates, checks the principal's scope, calls one service function and returns its
pydantic view; errors become ``{"error": {...}}`` with the status of :mod:`approvals.errors`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from approvals.errors import InvalidTransition
from approvals.schemas import ApprovalView, Decision, Outcome, RunView
from approvals.status import ApprovalStatus, RunStatus, Scope
from hitl.api import streams
from hitl.api.common import Caller, StrictJsonRoute
from hitl.core import auth, completion, lookback, runs, views

#: Bodies are strict JSON (no NaN or Infinity, UTF-8, bounded nesting): anything else is a 422 invalid_request.
router = APIRouter(prefix="/api/v1", route_class=StrictJsonRoute)


class ErrorDetail(BaseModel):
    """One itemised problem (a field failing the decision schema, a bad query parameter)."""

    loc: str
    msg: str


class ErrorInfo(BaseModel):
    """What went wrong; ``code`` is stable (``already_decided``, ``approval_not_found``, ...)."""

    code: str
    message: str
    status: int
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorInfo


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in (401, 403, 413, 422, *statuses)}


Text = Annotated[str, Field(max_length=10_000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Ttl = Annotated[float, Field(gt=0, le=90 * 86400, allow_inf_nan=False, description="Seconds it stays valid.")]


class StartRequest(BaseModel):
    """Start a run of ``workflow`` with ``payload`` (validated by the workflow's input model)."""

    workflow: Name
    payload: Any = None
    idempotency_key: Name | None = Field(None, description="Same key twice gives the same run.")


class StartResponse(BaseModel):
    """The run started (or, with a repeated idempotency key, the run started the first time)."""

    run_id: str
    run: RunView


class DecisionRequest(BaseModel):
    """An approval: an optional comment and data (checked against the wait's decision schema)."""

    comment: Text | None = None
    data: dict[str, Any] | None = None


class RejectRequest(BaseModel):
    """A rejection: why (passed to the continuation as the comment) and optional data."""

    reason: Annotated[str, Field(min_length=1, max_length=10_000)]
    data: dict[str, Any] | None = None


class CompleteRequest(BaseModel):
    """A decision with an explicit outcome and data."""

    outcome: Literal["approved", "rejected"]
    comment: Text | None = None
    data: dict[str, Any] | None = None


class DecisionResponse(BaseModel):
    """The decision recorded, and whether the continuation reached the broker (None: there is none)."""

    decision: Decision
    continuation_sent: bool | None


class CancelRequest(BaseModel):
    """Why the run is cancelled (recorded on the run)."""

    reason: Text | None = None


class CancelResponse(BaseModel):
    """The cancelled run and the pending approvals cancelled with it."""

    run_id: str
    status: RunStatus
    cancelled_approvals: list[str]


class TokenRequest(BaseModel):
    """Whom an approval token or link is for (their name is recorded as the decider)."""

    actor: Name
    ttl: Ttl | None = None


class LinkRequest(TokenRequest):
    """A one-click link: for whom, which action."""

    action: Literal["approve", "reject"] = "approve"


class TokenResponse(BaseModel):
    """An approval-scoped token: it reads and decides one approval, as ``actor``."""

    token: str
    approval_id: str
    actor: str


class LinkResponse(BaseModel):
    """A signed, single-use, expiring link for ``actor`` to ``action`` the approval."""

    url: str
    approval_id: str
    actor: str
    action: str


class CreateApprovalRequest(BaseModel):
    """An approval created ahead of its wait step (lookback); the wait that declares the same
    ``idempotency_key`` takes it, and goes on at once if it was already decided."""

    key: Name
    idempotency_key: Name
    subject: Any = None
    assignees: list[Name] = Field(default_factory=list, max_length=100)
    timeout: Annotated[float, Field(gt=0, le=365 * 86400, allow_inf_nan=False)] | None = Field(
        None, description="Seconds."
    )
    decision_schema: dict[str, Any] | None = Field(None, description="JSON Schema of the approval's data.")


class ApprovalPage(BaseModel):
    """One page of approvals, oldest first; pass ``next_cursor`` as ``cursor`` for the next (None: last)."""

    items: list[ApprovalView]
    next_cursor: str | None


class Health(BaseModel):
    """Whether the database and the broker answer, and whether the schema is the one this hitl needs."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable"]
    schema_: Literal["ok", "outdated", "unknown"] = Field(
        "unknown", alias="schema", description="unknown: the database did not answer."
    )
    problem: str | None = Field(None, description="What is wrong with the schema and what to run, on one line.")
    time: datetime


# ---------------------------------------------------------------- runs


@router.post("/runs", status_code=201, response_model=StartResponse, responses=_errors(404), tags=["runs"])
def start_run(
    body: StartRequest,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> StartResponse:
    """Start a run. ``Idempotency-Key`` (header) or ``idempotency_key`` (body): a repeat returns the same run."""
    auth.require(caller, Scope.START)
    run_id = runs.start(
        body.workflow, body.payload, idempotency_key=body.idempotency_key or idempotency_key, requester=caller.actor
    )
    return StartResponse(run_id=run_id, run=views.get_run(run_id))


@router.get("/runs", response_model=list[RunView], responses=_errors(), tags=["runs"])
def list_runs(
    caller: Caller,
    status: RunStatus | None = None,
    workflow: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunView]:
    """List runs, newest first (without approvals or timeline)."""
    auth.require(caller, Scope.READ)
    return views.list_runs(status=status, workflow=workflow, limit=limit)


@router.get("/runs/{run_id}", response_model=RunView, responses=_errors(404), tags=["runs"])
def get_run(run_id: str, caller: Caller) -> RunView:
    """A run with its approvals and timeline."""
    auth.require(caller, Scope.READ)
    return views.get_run(run_id)


@router.post("/runs/{run_id}/cancel", response_model=CancelResponse, responses=_errors(404, 409), tags=["runs"])
def cancel_run(run_id: str, caller: Caller, body: CancelRequest | None = None) -> CancelResponse:
    """Cancel a run and its pending approvals (409 if it already finished)."""
    auth.require(caller, Scope.CANCEL)
    cancelled = runs.cancel(run_id, actor=caller.actor, reason=body.reason if body else None, channel="http")
    return CancelResponse(run_id=run_id, status=RunStatus.CANCELLED, cancelled_approvals=cancelled)


@router.get("/runs/{run_id}/events", responses=_errors(404), tags=["events"], response_class=EventSourceResponse)
async def run_events(
    run_id: str, caller: Caller, last_event_id: Annotated[int, Header(ge=0)] = 0
) -> EventSourceResponse:
    """Server-sent events of a run: its timeline since ``Last-Event-ID``, then live; ends at ``run_finished``.

    Each event has ``id`` (the timeline id), ``event`` (the kind: ``step_finished``,
    ``waiting_for_input``, ``input_resolved``, ``run_finished``, ...) and JSON ``data``. 503 when the
    source of live events (Redis or the database) cannot be reached.
    """
    auth.require(caller, Scope.READ)
    await run_in_threadpool(views.get_run, run_id)  # 404 before the stream starts
    return EventSourceResponse(await streams.run_stream(run_id, last_event_id), ping=15)


# ---------------------------------------------------------------- approvals


@router.get("/approvals", response_model=ApprovalPage, responses=_errors(), tags=["approvals"])
def list_approvals(
    caller: Caller,
    status: ApprovalStatus | Literal["all"] = ApprovalStatus.PENDING,
    workflow: Annotated[str | None, Query(max_length=200)] = None,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    older_than: Annotated[
        float | None,
        Query(ge=0, le=views.MAX_AGE_SECONDS, allow_inf_nan=False, description="Seconds since creation, at least."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> ApprovalPage:
    """List approvals (pending by default), oldest first, a page at a time."""
    auth.require(caller, Scope.READ)
    items = views.list_approvals(
        status=None if status == "all" else ApprovalStatus(status),
        workflow=workflow,
        run_id=run_id,
        older_than=older_than,
        limit=limit + 1,
        assignee=assignee,
        after=cursor,
    )
    more = len(items) > limit
    items = items[:limit]
    return ApprovalPage(items=items, next_cursor=views.approval_cursor(items[-1]) if more else None)


@router.post("/approvals", status_code=201, response_model=ApprovalView, responses=_errors(), tags=["approvals"])
def create_approval(body: CreateApprovalRequest, caller: Caller) -> ApprovalView:
    """Create an approval ahead of the run's wait step (idempotent on ``idempotency_key``).

    People can decide it at once; the wait step declaring ``idempotency_key`` then continues without pausing.
    """
    auth.require(caller, Scope.START)
    return lookback.create_approval(
        body.key,
        idempotency_key=body.idempotency_key,
        subject=body.subject,
        assignees=body.assignees,
        timeout=body.timeout,
        decision=body.decision_schema,
        requester=caller.actor,
    )


@router.get("/approvals/events", responses=_errors(), tags=["events"], response_class=EventSourceResponse)
async def inbox_events(caller: Caller, last_event_id: Annotated[int, Header(ge=0)] = 0) -> EventSourceResponse:
    """Server-sent events for an inbox: ``waiting_for_input``, ``input_resolved``, ``decision_refused`` and
    ``run_finished`` of every run, live (and, with ``Last-Event-ID``, those missed since)."""
    auth.require(caller, Scope.READ)
    return EventSourceResponse(await streams.inbox_stream(last_event_id), ping=15)


@router.get("/approvals/{approval_id}", response_model=ApprovalView, responses=_errors(404), tags=["approvals"])
def get_approval(approval_id: str, caller: Caller) -> ApprovalView:
    """What an approval asks (``subject``), of whom, by when (``deadline``), its decision schema and decision."""
    auth.require(caller, Scope.READ, approval_id)
    return views.get_approval(approval_id)


@router.get(
    "/approvals/{approval_id}/events", responses=_errors(404), tags=["events"], response_class=EventSourceResponse
)
async def approval_events(
    approval_id: str, caller: Caller, last_event_id: Annotated[int, Header(ge=0)] = 0
) -> EventSourceResponse:
    """Server-sent events of one approval (readable with its approval token); ends when it is resolved."""
    auth.require(caller, Scope.READ, approval_id)
    run_id = (await run_in_threadpool(views.get_approval, approval_id)).run_id
    if run_id is None:
        raise InvalidTransition(f"approval {approval_id} was created ahead; it has events once a run takes it")
    return EventSourceResponse(await streams.approval_stream(run_id, approval_id, last_event_id), ping=15)


def _decided(decision: Decision) -> DecisionResponse:
    return DecisionResponse(decision=decision, continuation_sent=completion.continuation_sent(decision.approval_id))


DECIDE_ERRORS = _errors(404, 409)


@router.post(
    "/approvals/{approval_id}/approve", response_model=DecisionResponse, responses=DECIDE_ERRORS, tags=["approvals"]
)
def approve(approval_id: str, caller: Caller, body: DecisionRequest | None = None) -> DecisionResponse:
    """Approve; the run resumes with the decision. 409 if already decided, expired or cancelled."""
    body = body or DecisionRequest()
    return _decided(auth.decide_as(caller, approval_id, Outcome.APPROVED, comment=body.comment, data=body.data))


@router.post(
    "/approvals/{approval_id}/reject", response_model=DecisionResponse, responses=DECIDE_ERRORS, tags=["approvals"]
)
def reject(approval_id: str, body: RejectRequest, caller: Caller) -> DecisionResponse:
    """Reject with a reason; the run resumes with the rejection."""
    return _decided(auth.decide_as(caller, approval_id, Outcome.REJECTED, comment=body.reason, data=body.data))


@router.post(
    "/approvals/{approval_id}/complete", response_model=DecisionResponse, responses=DECIDE_ERRORS, tags=["approvals"]
)
def complete(approval_id: str, body: CompleteRequest, caller: Caller) -> DecisionResponse:
    """Decide with an explicit outcome and data (the data is checked against the wait's decision schema)."""
    return _decided(auth.decide_as(caller, approval_id, body.outcome, comment=body.comment, data=body.data))


@router.post(
    "/approvals/{approval_id}/token",
    status_code=201,
    response_model=TokenResponse,
    responses=_errors(404, 409),
    tags=["approvals"],
)
def make_token(approval_id: str, body: TokenRequest, caller: Caller) -> TokenResponse:
    """Make a token for ``actor`` that reads and decides this approval only (for a frontend approval card)."""
    auth.require(caller, Scope.DELEGATE)
    token = auth.approval_token(approval_id, body.actor, body.ttl)
    return TokenResponse(token=token, approval_id=approval_id, actor=body.actor)


@router.post(
    "/approvals/{approval_id}/links",
    status_code=201,
    response_model=LinkResponse,
    responses=_errors(404, 409),
    tags=["approvals"],
)
def make_link(approval_id: str, body: LinkRequest, caller: Caller) -> LinkResponse:
    """Make a signed one-click link for ``actor`` (expiring, single use) to put in an email or chat message."""
    auth.require(caller, Scope.DELEGATE)
    url = auth.link(approval_id, body.actor, body.action, body.ttl)
    return LinkResponse(url=url, approval_id=approval_id, actor=body.actor, action=body.action)


# ---------------------------------------------------------------- health


@router.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
def health(request: Request) -> Any:
    """Liveness and readiness: 200 when the database answers with the schema this hitl needs (the broker may
    be down: decisions still land and the outbox sends them later), 503 when it does not answer or its schema
    is behind (``problem`` says to run `hitl db upgrade`). No authentication."""
    from hitl.core.health import check, schema_status

    db_ok, broker_ok = check()
    problem = schema_status()[1] if db_ok else None
    body = Health(
        status="ok" if db_ok and broker_ok and not problem else "degraded",
        database="ok" if db_ok else "unreachable",
        broker="ok" if broker_ok else "unreachable",
        schema=("outdated" if problem else "ok") if db_ok else "unknown",
        problem=problem,
        time=datetime.now().astimezone(),
    )
    return JSONResponse(body.model_dump(mode="json", by_alias=True), status_code=200 if db_ok and not problem else 503)
