"""The FastAPI application: error mapping, the request size limit, authentication and the routers.

Every error answers in one shape, ``{"error": {"code", "message", "status", "details"}}`` (:func:`error_body`):
hitl's own errors, request validation, bodies that are not strict JSON (:class:`StrictJsonRoute`), bodies over
``HITL_MAX_BODY_BYTES`` (:class:`BodyLimit`), Starlette's 404 and 405, and unexpected failures (500, no detail).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from approvals.errors import HitlError, InvalidPayload, InvalidRequest, LinkInvalid, PayloadTooLarge, Unauthenticated
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


def _shaped(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "status": status, "details": []}}
    return JSONResponse(body, status_code=status, headers=headers)


#: Codes of the HTTP errors Starlette and FastAPI raise themselves (hitl's own errors carry theirs).
HTTP_CODES = {
    400: ("bad_request", "the request could not be read"),
    404: ("route_not_found", "no such route; the API is under /api/v1 (see /docs)"),
    413: ("payload_too_large", "the request body is too large"),
}


class Refused(HTTPException):
    """A :class:`HitlError` raised while FastAPI reads the request body.

    FastAPI turns any other exception raised there into its own 400 (``There was an error parsing the body``);
    an ``HTTPException`` goes through, and the app's handler answers with the wrapped error.
    """

    def __init__(self, error: HitlError) -> None:
        super().__init__(error.http_status, error.message)
        self.error = error


class StrictJsonRequest(Request):
    """A request whose JSON body is parsed by :func:`hitl.jsonsafe.loads` (no NaN/Infinity, UTF-8, bounded depth).

    A body that is not strict JSON is refused with :class:`InvalidRequest` (422 ``invalid_request``), the code
    FastAPI's own validation errors get here.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            from hitl.jsonsafe import loads

            try:
                self._json = loads(await self.body(), "the request body")
            except InvalidPayload as exc:
                raise Refused(InvalidRequest(exc.message)) from None
        return self._json


class StrictJsonRoute(APIRoute):
    """An API route reading its body as :class:`StrictJsonRequest` (FastAPI's documented custom route class)."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Any:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


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

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, Refused):
            return error_response(exc.error)
        if exc.status_code == 405:
            return _not_allowed(request)
        code, message = HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        return _shaped(exc.status_code, code, message, exc.headers)

    @app.exception_handler(Exception)
    def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer; the client gets no detail of it.
        return _shaped(500, "internal_error", "internal error; the server log has the details")

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
    return _shaped(405, "method_not_allowed", message, {"Allow": allow})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hitl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
