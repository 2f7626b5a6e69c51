"""The FastAPI application: error mapping, the request size limit, authentication and the routers.

Every error answers in one shape, ``{"error": {"code", "message", "status", "details"}}`` (:func:`error_body`):
hitl's own errors, request validation, bodies that are not strict JSON (:class:`StrictJsonRoute`), bodies over
``HITL_MAX_BODY_BYTES`` (:class:`BodyLimit`), Starlette's 404 and 405, and unexpected failures (500, no detail).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from approvals.errors import HitlError, LinkInvalid, PayloadTooLarge, Unauthenticated
from hitl.api.common import (
    HTTP_CODES,
    Refused,
    error_response,
    shaped_error,
)
from hitl.infra.settings import get_settings

#: Threads for sync routes and database reads (live streams hold none: they are async); AnyIO's default is 40.
THREADS = 200


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
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise Refused(self._error())  # the app's HTTPException handler answers 413
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Refused:
            if started:
                raise
            await self._too_large(scope, receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.limit} bytes (HITL_MAX_BODY_BYTES)")

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(self._error())(scope, receive, send)


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
    from hitl.core.registry import load_workflows

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

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, Refused):
            return error_response(exc.error)
        if exc.status_code == 405:
            return _not_allowed(request)
        code, message = HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        return shaped_error(exc.status_code, code, message, exc.headers)

    @app.exception_handler(Exception)
    def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer; the client gets no detail of it.
        return shaped_error(500, "internal_error", "internal error; the server log has the details")

    app.include_router(routes.router)
    app.include_router(pages.router)
    app.add_middleware(BodyLimit, limit=get_settings().max_body_bytes)
    return app


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _not_allowed(request: Request) -> JSONResponse:
    """405 with every method the path takes (Starlette's ``Allow`` names only the first route matching the path;
    RFC 9110 section 15.5.6 asks for all of them)."""
    methods = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in request.app.router.routes)
    ]
    allow = ", ".join(methods)
    message = f"{request.method} is not allowed on {request.url.path}; it takes {allow}"
    return shaped_error(405, "method_not_allowed", message, {"Allow": allow})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hitl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
