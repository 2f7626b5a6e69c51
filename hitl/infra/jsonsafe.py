"""Making values JSON-safe for task messages and JSON columns, and refusing what JSON does not allow.

Every JSON document that enters hitl (the CLI's ``--payload``, ``--subject`` and ``--data``, HTTP request bodies,
the inbox's JSON form fields) is parsed by :func:`loads`, which is stricter than :func:`json.loads`: RFC 8259
has no ``NaN`` or ``Infinity`` (Python accepts them, PostgreSQL's ``json`` type refuses them), text must be
UTF-8 (RFC 8259 section 8.1), and nesting stops at :data:`MAX_DEPTH`. :func:`check_size` refuses the same
values when they come from Python (``hitl.start(...)``) before anything is stored.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

from approvals.errors import InvalidPayload, PayloadTooLarge
from hitl.infra.settings import get_settings

#: The deepest nesting of arrays and objects accepted (a document nested deeper is refused, not parsed).
MAX_DEPTH = 100


class _NotFinite(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _constant(token: str) -> Any:
    raise _NotFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise _NotFinite(token)
    return value


def loads(text: str | bytes, what: str) -> Any:
    """Parse ``text`` as strict JSON: no ``NaN``/``Infinity``, UTF-8 only, at most :data:`MAX_DEPTH` deep.

    Args:
        text: the document (``bytes`` are decoded as UTF-8).
        what: how the document is named in the error (``"--payload"``, ``"the request body"``).

    Raises:
        InvalidPayload: the text is not UTF-8, not valid JSON, holds a non-finite number, or is nested deeper
            than :data:`MAX_DEPTH`.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPayload(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise InvalidPayload(f"{what} holds {exc.token}; JSON numbers must be finite") from None
    except RecursionError:
        raise InvalidPayload(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    check_depth(value, what)
    return value


def check_depth(value: Any, what: str) -> None:
    """Refuse ``value`` if its lists and dicts nest more than :data:`MAX_DEPTH` levels (checked without recursion).

    Raises:
        InvalidPayload: it is nested deeper.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise InvalidPayload(f"{what} is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def jsonable(value: Any) -> Any:
    """Return ``value`` with pydantic models dumped to JSON-mode dicts (recursively in lists and dicts)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def check_size(value: Any, what: str = "payload") -> int:
    """Return the size in bytes of ``value`` as compact JSON.

    Raises:
        InvalidPayload: ``value`` cannot be encoded as JSON (``NaN`` and infinities included: JSON has none), or
            it is nested more than :data:`MAX_DEPTH` levels deep.
        PayloadTooLarge: the encoding is larger than ``HITL_MAX_PAYLOAD_BYTES``.
    """
    check_depth(value, what)
    try:
        size = len(json.dumps(jsonable(value), separators=(",", ":"), allow_nan=False).encode())
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from exc
        raise InvalidPayload(f"{what} holds NaN or Infinity; JSON numbers must be finite") from None
    except TypeError as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from exc
    limit = get_settings().max_payload_bytes
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} (HITL_MAX_PAYLOAD_BYTES)")
    return size


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object (a ``@path`` reads the file), strictly as :func:`loads` does.

    Raises:
        InvalidPayload: the text is not valid JSON, not an object, or the file cannot be read.
    """
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise InvalidPayload(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_json(text: str, what: str) -> Any:
    """Parse ``text`` as JSON, strictly as :func:`loads` does; ``@path`` reads the file at ``path``.

    Raises:
        InvalidPayload: the text is not valid JSON or the file cannot be read.
    """
    if text.startswith("@"):
        try:
            with open(text[1:], "rb") as fh:
                return loads(fh.read(), what)
        except OSError as exc:
            raise InvalidPayload(f"cannot read {what} file {text[1:]!r}: {exc.strerror}") from exc
    return loads(text, what)
