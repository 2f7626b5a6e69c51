"""The approval inbox and one-click link pages: server-rendered HTML, live through server-sent events.

``/inbox`` lists pending approvals; ``/inbox/approvals/{id}`` is the approval card (the request, the
deadline, a form generated from the decision schema, approve/reject with a comment). People sign in with an
API key (a signed session cookie names the key). ``/l/{token}`` is a signed link's page: opening it decides
nothing (mail scanners prefetch links); its one button does, once. Forms carry a CSRF token bound to the
session, and the cookie is ``SameSite=Strict`` and ``HttpOnly``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from approvals.errors import HitlError, InvalidPayload, LinkInvalid, Unauthenticated
from approvals.schemas import ApprovalView, Decision, Outcome
from approvals.status import Scope
from hitl.api.common import SESSION_COOKIE
from hitl.api.forms import data_from_form, fields_of
from hitl.core import auth, views
from hitl.core.auth import Principal
from hitl.infra.settings import get_settings

R = TypeVar("R")
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _session(request: Request) -> tuple[Principal, str]:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthenticated()
    return auth.session_principal(token), token


def _check_csrf(session: str, sent: str) -> None:
    if not hmac.compare_digest(auth.csrf_token(session), sent):
        raise LinkInvalid("the form is stale or came from another site (CSRF token mismatch); reload the page")


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    """The inbox is the home page."""
    return RedirectResponse("/inbox", status_code=303)


@router.get("/inbox/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    """The sign-in form."""
    return _page(request, "login.html")


@router.post("/inbox/login", response_model=None)
def login(request: Request, api_key: str = Form("")) -> Response:
    """Sign in with an API key: set the session cookie and go to the inbox."""
    try:
        principal = auth.authenticate(api_key.strip())
        if principal.via != "key":
            raise Unauthenticated("sign in with an API key (hk_...), not a token")
    except HitlError as exc:
        return _page(request, "login.html", status=401, error=exc.message)
    response = RedirectResponse("/inbox", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.session_token(principal),
        max_age=int(get_settings().session_ttl),
        httponly=True,
        samesite="strict",
        secure=get_settings().public_url.startswith("https://"),
    )
    return response


@router.post("/inbox/logout", response_class=RedirectResponse)
def logout() -> RedirectResponse:
    """Sign out (drop the session cookie)."""
    response = RedirectResponse("/inbox/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _pending(principal: Principal) -> list[ApprovalView]:
    auth.require(principal, Scope.READ)
    return views.list_approvals(limit=200)


@router.get("/inbox", response_class=HTMLResponse)
def inbox(request: Request) -> HTMLResponse:
    """Pending approvals, oldest first; the list refreshes itself on approval events."""
    principal, session = _session(request)
    return _page(
        request, "inbox.html", approvals=_pending(principal), actor=principal.actor, csrf=auth.csrf_token(session)
    )


@router.get("/inbox/rows", response_class=HTMLResponse)
def inbox_rows(request: Request) -> HTMLResponse:
    """The inbox table's rows (the fragment the page reloads live)."""
    principal, _ = _session(request)
    return _page(request, "inbox_rows.html", approvals=_pending(principal))


def _card(request: Request, approval_id: str, status: int = 200, **extra: Any) -> HTMLResponse:
    principal, session = _session(request)
    auth.require(principal, Scope.READ)
    a = views.get_approval(approval_id)
    return _page(
        request,
        "card.html",
        status=status,
        a=a,
        run=views.get_run(a.run_id) if a.run_id else None,
        subject=json.dumps(a.subject, indent=2, ensure_ascii=False),
        fields=fields_of(a.decision_schema),
        action_url=f"/inbox/approvals/{a.id}",
        actor=principal.actor,
        csrf=auth.csrf_token(session),
        **extra,
    )


@router.get("/inbox/approvals/{approval_id}", response_class=HTMLResponse)
def card(request: Request, approval_id: str) -> HTMLResponse:
    """The approval card: request, deadline, decision form, and the live status of its run."""
    try:
        return _card(request, approval_id)
    except (Unauthenticated, LinkInvalid):
        raise
    except HitlError as exc:
        return _page(
            request, "message.html", status=exc.http_status, heading="Cannot show this approval", message=exc.message
        )


@router.get("/inbox/approvals/{approval_id}/state", response_class=HTMLResponse)
def card_state(request: Request, approval_id: str) -> HTMLResponse:
    """The card's status panel (the fragment the card reloads live)."""
    principal, _ = _session(request)
    auth.require(principal, Scope.READ)
    a = views.get_approval(approval_id)
    return _page(request, "card_state.html", a=a, run=views.get_run(a.run_id) if a.run_id else None)


@router.post("/inbox/approvals/{approval_id}", response_model=None)
async def decide(request: Request, approval_id: str) -> Response:
    """Approve or reject from the card's form; show the card again with the outcome or the error."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    return await _run_sync(_decide_from_card, request, approval_id, form)


def _decide_from_card(request: Request, approval_id: str, form: dict[str, str]) -> Response:
    principal, session = _session(request)
    _check_csrf(session, form.get("csrf", ""))
    action = form.get("action", "")
    try:
        if action not in auth.LINK_ACTIONS:
            raise InvalidPayload("choose Approve or Reject")
        a = views.get_approval(approval_id)
        outcome = auth.LINK_ACTIONS[action]
        comment = form.get("comment") or None
        if outcome is Outcome.REJECTED and not comment:
            raise InvalidPayload("say why you reject it (comment)")
        data = data_from_form(a.decision_schema, form) if outcome is Outcome.APPROVED else {}
        decision = auth.decide_as(principal, approval_id, outcome, comment=comment, data=data, channel="inbox")
    except (Unauthenticated, LinkInvalid):
        raise
    except HitlError as exc:
        return _card(request, approval_id, status=exc.http_status, error=exc.message)
    return _card(request, approval_id, notice=_said(decision))


# ---------------------------------------------------------------- signed links


def _link_page(request: Request, token: str, status: int = 200, **extra: Any) -> HTMLResponse:
    try:
        principal = auth.link_principal(token)
        assert principal.approval_id is not None
        a = views.get_approval(principal.approval_id)
    except HitlError as exc:
        return _page(
            request, "message.html", status=exc.http_status, heading="This link does not work", message=exc.message
        )
    action = principal.claims["x"]
    return _page(
        request,
        "link.html",
        status=status,
        a=a,
        action=action,
        verb=action.capitalize(),
        link_actor=principal.actor,
        subject=json.dumps(a.subject, indent=2, ensure_ascii=False),
        fields=fields_of(a.decision_schema),
        **extra,
    )


@router.get("/l/{token}", response_class=HTMLResponse)
def link_page(request: Request, token: str) -> HTMLResponse:
    """A signed link's page: the request and one button. Opening it decides nothing."""
    return _link_page(request, token)


@router.post("/l/{token}", response_class=HTMLResponse)
async def link_decide(request: Request, token: str) -> HTMLResponse:
    """The link's button: decide once, as the person the link was made for."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    return await _run_sync(_decide_from_link, request, token, form)


def _decide_from_link(request: Request, token: str, form: dict[str, str]) -> HTMLResponse:
    try:
        principal = auth.link_principal(token)
        assert principal.approval_id is not None
        outcome = auth.LINK_ACTIONS[principal.claims["x"]]
        comment = form.get("comment") or None
        if outcome is Outcome.REJECTED and not comment:
            raise InvalidPayload("say why you reject it (comment)")
        schema = views.get_approval(principal.approval_id).decision_schema
        data = data_from_form(schema, form) if outcome is Outcome.APPROVED else {}
        decision = auth.decide_as(principal, principal.approval_id, outcome, comment=comment, data=data, channel="link")
    except HitlError as exc:
        return _link_page(request, token, status=exc.http_status, error=exc.message)
    return _link_page(request, token, done=_said(decision))


def _said(decision: Decision) -> str:
    if not decision.settled:
        return (
            f"{decision.actor} voted {decision.outcome.value} ({len(decision.votes)} vote(s) so far); waiting for more"
        )
    return f"{decision.outcome.value} by {decision.actor}; the run resumes."


async def _run_sync(fn: Callable[..., R], *args: Any) -> R:
    return await run_in_threadpool(fn, *args)
