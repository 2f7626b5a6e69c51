"""What the API's routes and pages share with the application: the error shape, strict JSON bodies and the caller
(authentication)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from approvals.errors import HitlError, InvalidPayload, InvalidRequest, Unauthenticated
from hitl.core.auth import Principal, authenticate, session_principal

SESSION_COOKIE = "hitl_session"

_bearer = HTTPBearer(auto_error=False, description="An API key (hk_...) or an approval token (hat....).")


def error_body(exc: HitlError) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": exc.code, "message": exc.message, "status": exc.http_status, "details": exc.details}}


def error_response(exc: HitlError) -> JSONResponse:
    """``exc`` as a JSON response with its HTTP status (401 adds ``WWW-Authenticate: Bearer``)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)


def shaped_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
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
    """A request whose JSON body is parsed by :func:`hitl.infra.jsonsafe.loads` (no NaN/Infinity, UTF-8, bounded depth).

    A body that is not strict JSON is refused with :class:`InvalidRequest` (422 ``invalid_request``), the code
    FastAPI's own validation errors get here.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            from hitl.infra.jsonsafe import loads

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
