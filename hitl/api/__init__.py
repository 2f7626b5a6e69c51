"""The HTTP API and the approval inbox (``hitl serve``): a FastAPI app over the engine's service functions.

Routes are thin: they authenticate (:mod:`hitl.core.auth`), call one service function and map
:class:`~approvals.errors.HitlError` to its HTTP status with a JSON body
``{"error": {"code", "message", "status", "details"}}``.
"""

from hitl.api.app import create_app

__all__ = ["create_app"]
