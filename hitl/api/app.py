"""The FastAPI application: error mapping, the request size limit, authentication and the routers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from approvals.errors import HitlError, LinkInvalid, PayloadTooLarge, Unauthenticated
from hitl.auth import Principal, authenticate, session_principal
from hitl.settings import get_settings

SESSION_COOKIE = "hitl_session"
#: Threads for sync routes and database reads (live streams hold none: they are async); AnyIO's default is 40.
THREADS = 200

_bearer = HTTPBearer(auto_error=False, description="An API key (hk_...) or an approval token (hat....).")


def error_body(exc: HitlError) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": exc.code, "message": exc.message, "status": exc.http_status, "details": exc.details}}


def error_response(exc: HitlError) -> JSONResponse:
    """``exc`` as a JSON response with its HTTP status (401 adds ``WWW-Authenticate: Bearer``)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller: a bearer API key or approval token; for GETs also the inbox session cookie.

    The cookie is accepted on safe methods only, so another site cannot make a signed-in browser change
    anything through the JSON API (the inbox's own forms carry a CSRF token instead).

    Raises:
        Unauthenticated: no credential, or an unknown or revoked key.
        LinkInvalid: an altered or expired token.
    """
    if credentials is not None:
        return authenticate(credentials.credentials)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method in ("GET", "HEAD"):
        return session_principal(cookie)
    raise Unauthenticated()


Caller = Annotated[Principal, Depends(principal)]


class BodyLimit:
    """Answer 413 to a request whose body exceeds ``limit`` bytes, declared or streamed (ASGI middleware)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"the request body is larger than {self.limit} bytes (HITL_MAX_BODY_BYTES)")
        await error_response(exc)(scope, receive, send)


class _TooLarge(Exception):
    pass


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    from hitl.api import livebus

    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    try:
        yield
    finally:
        await livebus.shutdown()


def create_app() -> FastAPI:
    """Build the app: JSON API under ``/api/v1``, the inbox under ``/inbox``, one-click links under ``/l``."""
    from hitl.api import pages, routes
    from hitl.registry import load_workflows

    load_workflows()
    app = FastAPI(
        title="hitl",
        summary="Human-in-the-loop approvals for Celery: start runs, read and decide approvals, follow events.",
        version=_version(),
        lifespan=_lifespan,
    )

    @app.exception_handler(HitlError)
    def _hitl_error(request: Request, exc: HitlError) -> Any:
        if isinstance(exc, Unauthenticated | LinkInvalid) and request.url.path.startswith("/inbox"):
            return RedirectResponse("/inbox/login", status_code=303)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": "/".join(str(p) for p in e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        body = {
            "error": {
                "code": "invalid_request",
                "message": "the request is not valid: " + "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5]),
                "status": 422,
                "details": json.loads(json.dumps(details, default=str)),
            }
        }
        return JSONResponse(body, status_code=422)

    app.include_router(routes.router)
    app.include_router(pages.router)
    app.add_middleware(BodyLimit, limit=get_settings().max_body_bytes)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hitl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
