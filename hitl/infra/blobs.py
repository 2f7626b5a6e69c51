"""Large inputs stored once and passed by reference.

A value whose JSON is larger than ``HITL_INLINE_PAYLOAD_BYTES`` is written once to ``hitl_blobs`` under the
SHA-256 of its canonical JSON, and task messages, the outbox and the run row carry a small reference
``{"type": "hitl.ref", "sha256": ..., "size": ...}`` instead; a step receives the value itself (resolved
when it starts). The broker and the outbox then never hold big payloads, and the same input started many
times is stored once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import Blob
from hitl.infra.db import read_session
from hitl.infra.settings import get_settings

REF_TAG = "hitl.ref"


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a blob reference."""
    return isinstance(value, dict) and value.get("type") == REF_TAG and isinstance(value.get("sha256"), str)


def store(session: Session, value: Any) -> Any:
    """Return ``value`` itself if it is small, else a reference to it, stored in the caller's transaction."""
    kept, blob = split(value)
    save(session, [blob] if blob is not None else [])
    return kept


def split(value: Any) -> tuple[Any, Blob | None]:
    """Return ``(value, None)`` if ``value`` is small, else ``(reference, blob)``: the row :func:`save` stores.

    Nothing is written: a caller learns whether a write needs a blob before it opens its transaction.
    """
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    if len(encoded) <= get_settings().inline_payload_bytes:
        return value, None
    digest = hashlib.sha256(encoded).hexdigest()
    return {"type": REF_TAG, "sha256": digest, "size": len(encoded)}, Blob(sha256=digest, data=value, size=len(encoded))


def save(session: Session, rows: list[Blob]) -> None:
    """Store the blobs of :func:`split` in ``session`` (the caller's transaction), unless stored already."""
    for blob in rows:
        if session.get(Blob, blob.sha256) is None:
            try:
                with session.begin_nested():  # a racing start of the same input may insert it first
                    session.add(blob)
            except IntegrityError:
                pass


def split_args(sigs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Blob]]:
    """:func:`split` each positional argument of ``sigs`` (signature dicts): the signatures with references
    in place of large arguments, and the blobs to :func:`save`."""
    out, blobs = [], []
    for sig in sigs:
        args = []
        for arg in sig.get("args") or []:
            kept, blob = split(arg)
            args.append(kept)
            if blob is not None:
                blobs.append(blob)
        out.append({**sig, "args": args})
    return out, blobs


def resolve(value: Any) -> Any:
    """Return the value a reference points to (anything else unchanged).

    Raises:
        InvalidPayload: the blob is missing (deleted by hand).
    """
    if not is_ref(value):
        return value
    with read_session() as s:
        row = s.execute(select(Blob.data).where(Blob.sha256 == value["sha256"])).one_or_none()
    if row is None:
        raise InvalidPayload(f"stored input {value['sha256']} is missing from hitl_blobs")
    return row[0]
