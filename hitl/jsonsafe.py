"""Making values JSON-safe for task messages and JSON columns, and enforcing the payload size limit."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from approvals.errors import InvalidPayload, PayloadTooLarge
from hitl.settings import get_settings


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
        InvalidPayload: ``value`` cannot be encoded as JSON.
        PayloadTooLarge: the encoding is larger than ``HITL_MAX_PAYLOAD_BYTES``.
    """
    try:
        size = len(json.dumps(jsonable(value), separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from exc
    limit = get_settings().max_payload_bytes
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} (HITL_MAX_PAYLOAD_BYTES)")
    return size


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object (a ``@path`` reads the file).

    Raises:
        InvalidPayload: the text is not valid JSON, not an object, or the file cannot be read.
    """
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise InvalidPayload(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_json(text: str, what: str) -> Any:
    """Parse ``text`` as JSON; ``@path`` reads the file at ``path``.

    Raises:
        InvalidPayload: the text is not valid JSON or the file cannot be read.
    """
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise InvalidPayload(f"cannot read {what} file {text[1:]!r}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
