"""The audit log: an append-only record of every decision attempt, accepted or refused, chained by hashes.

Each entry stores who tried what, when, through which channel, whether it was accepted (and if not, why),
the comment, and the SHA-256 of the decision data (``payload_hash``). Its ``hash`` is SHA-256 over all of
these fields and ``prev_hash``, the hash of the entry before it (64 zeros for the first one), so an entry
that is edited, or deleted from the middle, breaks the chain; :func:`verify` finds the first break.

A chain alone cannot show that its newest entries were removed (or the newest one rewritten): what is left
is still a valid chain. Keep the head hash that ``hitl audit verify`` prints somewhere else (a ticket, a
log shipper, a notary) and pass it later as the anchor (``verify(anchor=...)``, ``--anchor``) to detect
that too.

Appending is serialised so that two writers never chain onto the same predecessor: on PostgreSQL by a
transaction-scoped advisory lock taken before reading the last hash; on SQLite by hitl's ``BEGIN
IMMEDIATE`` transactions, which already let one writer in at a time. The lock is held until commit, so
:func:`record` is the last write of its transaction: taking it after every row lock of the transaction
means two transactions never wait on each other in opposite orders.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel
from sqlalchemy import Table, insert, or_, select, text
from sqlalchemy.orm import Session

from approvals.errors import InfrastructureError
from approvals.models import Approval, AuditRecord, utcnow
from hitl.db import session_scope

_TABLE = cast(Table, AuditRecord.__table__)
#: A Core INSERT (one statement; the ORM's unit of work costs more than the statement on the decision path).
_INSERT_ENTRY = insert(_TABLE).returning(_TABLE.c.id)

log = logging.getLogger(__name__)

#: ``prev_hash`` of the first entry.
GENESIS = "0" * 64
#: Key of the PostgreSQL advisory lock that serialises appends (any constant 64-bit integer; "hitlaudt").
ADVISORY_LOCK_KEY = 0x6869746C61756474
#: Entries read per transaction by :func:`verify`.
VERIFY_BATCH = 1000
#: The fields ``hash`` covers, in the order they are listed in its canonical encoding (keys are sorted).
HASHED_FIELDS = (
    "at",
    "actor",
    "channel",
    "action",
    "approval_id",
    "run_id",
    "outcome",
    "accepted",
    "reason",
    "comment",
    "payload_hash",
    "prev_hash",
)


class AuditEntry(BaseModel):
    """One entry of the audit log, as shown by ``hitl audit show``."""

    id: int
    at: datetime
    actor: str
    channel: str
    action: str
    approval_id: str | None
    run_id: str | None
    outcome: str | None
    accepted: bool
    reason: str | None
    comment: str | None
    payload_hash: str
    prev_hash: str
    hash: str


class AuditReport(BaseModel):
    """What :func:`verify` found: whether the chain is intact, and where it first breaks if not."""

    ok: bool
    #: Entries checked (up to and including the first broken one).
    checked: int
    #: Id and hash of the newest entry (on a break, of the last entry that fits): keep the hash elsewhere
    #: to detect a truncated log later.
    head_id: int | None
    head_hash: str | None
    #: Id of the first entry that does not fit the chain.
    broken_id: int | None = None
    #: ``edited``: its hash does not match its fields. ``deleted_or_reordered``: its ``prev_hash`` is not
    #: the hash of the entry before it (that entry was deleted, rewritten with a new hash, or moved).
    #: ``truncated``: the anchor hash given to :func:`verify` is not in the chain.
    problem: Literal["edited", "deleted_or_reordered", "truncated"] | None = None
    detail: str | None = None


def canonical_json(value: Any) -> bytes:
    """Return ``value`` as canonical JSON: sorted keys, no whitespace, UTF-8 (not JSON: its ``str()``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def payload_hash(payload: Any) -> str:
    """Return the SHA-256 (hex) of the canonical JSON of ``payload`` (the decision data; None hashes ``null``)."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def entry_hash(fields: dict[str, Any]) -> str:
    """Return the hash of an entry: SHA-256 (hex) of the canonical JSON of its :data:`HASHED_FIELDS`.

    ``at`` is encoded as ISO 8601 in UTC with microseconds, so the hash survives a round trip through the
    database (PostgreSQL and SQLite both keep microseconds).
    """
    values = {name: fields[name] for name in HASHED_FIELDS}
    at: datetime = values["at"]
    values["at"] = at.astimezone(UTC).isoformat(timespec="microseconds")
    return hashlib.sha256(canonical_json(values)).hexdigest()


def _clip(column: str, value: str | None) -> str | None:
    """Cut ``value`` to the length of its column (an attempt with a 300-character id is still recorded)."""
    length = getattr(AuditRecord.__table__.c[column].type, "length", None)
    return value[:length] if value is not None and length else value


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def record(
    session: Session,
    *,
    action: str,
    actor: str,
    channel: str,
    accepted: bool,
    approval_id: str | None = None,
    run_id: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    comment: str | None = None,
    payload: Any = None,
) -> int:
    """Append one entry to the audit log in ``session``'s transaction; return its id.

    Call it last in the transaction (see the module docstring): on PostgreSQL it takes the log's advisory
    lock, held until commit.

    Args:
        action: what was attempted: ``decide``, ``timeout``, ``cancel``.
        actor: who attempted it (``hitl:deadline`` for the deadline sweep).
        channel: where it came from: ``cli``, ``api``, ``http``, ``link``, ``inbox``, ``deadline``.
        accepted: whether it took effect; ``reason`` says why not.
        approval_id, run_id: what it was about; ``run_id`` is looked up from the approval when not given.
        outcome: the outcome asked for (``approved``, ``rejected``, ``timed_out``, ``cancelled``).
        comment: the person's comment.
        payload: the decision data; only its SHA-256 is stored (:func:`payload_hash`).
    """
    if run_id is None and approval_id is not None:
        run_id = session.scalar(select(Approval.run_id).where(Approval.id == approval_id))
    fields = entry_fields(
        action=action,
        actor=actor,
        channel=channel,
        accepted=accepted,
        approval_id=approval_id,
        run_id=run_id,
        outcome=outcome,
        reason=reason,
        comment=comment,
        payload=payload,
    )
    _lock(session)
    fields["prev_hash"] = _head(session)
    session.flush()  # what the caller added goes first (the entry may refer to it)
    return int(session.execute(_INSERT_ENTRY, {**fields, "hash": entry_hash(fields)}).scalar_one())


def entry_fields(
    *,
    action: str,
    actor: str,
    channel: str,
    accepted: bool,
    approval_id: str | None,
    run_id: str | None,
    outcome: str | None = None,
    reason: str | None = None,
    comment: str | None = None,
    payload: Any = None,
) -> dict[str, Any]:
    """Return the fields of an entry, stamped now, before it is chained (for :func:`record_many`).

    Arguments as for :func:`record`, except that ``run_id`` is not looked up.
    """
    return {
        "at": utcnow(),
        "actor": _clip("actor", actor),
        "channel": _clip("channel", channel),
        "action": _clip("action", action),
        "approval_id": _clip("approval_id", approval_id),
        "run_id": _clip("run_id", run_id),
        "outcome": _clip("outcome", outcome),
        "accepted": accepted,
        "reason": reason,
        "comment": comment,
        "payload_hash": payload_hash(payload),
    }


def record_many(session: Session, items: list[dict[str, Any]]) -> None:
    """Append entries made by :func:`entry_fields`, in order, in ``session``'s transaction.

    One lock, one read of the head hash and one multi-row INSERT for all of them (the deadline sweep
    times out thousands of approvals per transaction). The same rule as :func:`record`: call it last.
    """
    if not items:
        return
    _lock(session)
    prev = _head(session)
    rows = []
    for fields in items:
        row = {**fields, "prev_hash": prev}
        row["hash"] = prev = entry_hash(row)
        rows.append(row)
    session.execute(insert(_TABLE), rows)  # executed in list order: ids follow the chain


def _head(session: Session) -> str:
    """Return the hash of the newest entry (:data:`GENESIS` when the log is empty)."""
    return session.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)) or GENESIS


def record_refused(
    *,
    action: str,
    actor: str,
    channel: str,
    reason: str,
    approval_id: str | None = None,
    run_id: str | None = None,
    outcome: str | None = None,
    comment: str | None = None,
    payload: Any = None,
) -> None:
    """Append a refused attempt (``accepted=False``) in a transaction of its own.

    For attempts that raised: their transaction was rolled back, so the entry is written after it. If the
    database fails here the attempt's own error matters more to the caller: this one is logged, not raised.
    Arguments as for :func:`record`.
    """
    try:
        with session_scope() as s:
            record(
                s,
                action=action,
                actor=actor,
                channel=channel,
                accepted=False,
                approval_id=approval_id,
                run_id=run_id,
                outcome=outcome,
                reason=reason,
                comment=comment,
                payload=payload,
            )
    except InfrastructureError:
        log.exception("could not write the audit entry of a refused %s by %s on %s", action, actor, approval_id)


def _entry(row: AuditRecord) -> AuditEntry:
    return AuditEntry.model_validate(row, from_attributes=True)


def entries(run_id: str | None = None, approval_id: str | None = None) -> list[AuditEntry]:
    """Return audit entries, oldest first: all of them, or those of one run and/or one approval.

    A run's entries include those on its approvals recorded before the run took them (approvals created
    ahead, see :mod:`hitl.lookback`).
    """
    query = select(AuditRecord).order_by(AuditRecord.id)
    if run_id is not None:
        of_run = select(Approval.id).where(Approval.run_id == run_id)
        query = query.where(or_(AuditRecord.run_id == run_id, AuditRecord.approval_id.in_(of_run)))
    if approval_id is not None:
        query = query.where(AuditRecord.approval_id == approval_id)
    with session_scope() as s:
        return [_entry(row) for row in s.scalars(query)]


def _check(row: AuditRecord, expected_prev: str, prev_id: int | None) -> AuditReport | None:
    """Return the problem with ``row`` given the hash it should chain onto, or None if it fits."""
    if row.prev_hash != expected_prev:
        after = f"entry {prev_id}" if prev_id is not None else "the start of the log"
        return AuditReport(
            ok=False,
            checked=0,
            head_id=None,
            head_hash=None,
            broken_id=row.id,
            problem="deleted_or_reordered",
            detail=f"entry {row.id}: its prev_hash does not match the hash of {after} "
            "(an entry between them was deleted, or moved, or the one before was rewritten with a new hash)",
        )
    fields = {name: getattr(row, name) for name in HASHED_FIELDS}
    if entry_hash(fields) != row.hash:
        return AuditReport(
            ok=False,
            checked=0,
            head_id=None,
            head_hash=None,
            broken_id=row.id,
            problem="edited",
            detail=f"entry {row.id}: its hash does not match its fields (it was edited after it was written)",
        )
    return None


def verify(anchor: str | None = None) -> AuditReport:
    """Walk the whole log, oldest first, and check every entry's hash and link to the one before.

    Entries are read in batches of :data:`VERIFY_BATCH`, each in a short transaction, so writers are not
    held up; entries appended meanwhile are checked too. A truncated log (newest entries removed) still
    verifies by its chain alone: pass a head hash kept elsewhere from an earlier run as ``anchor`` to
    detect that.

    Args:
        anchor: a hash the chain must contain (an earlier ``head_hash``).

    Returns:
        The report: ``ok`` and the head, or the first broken entry's id, the kind of break and a sentence.
    """
    expected, prev_id, checked, anchored = GENESIS, None, 0, anchor is None
    while True:
        with session_scope() as s:
            query = select(AuditRecord).order_by(AuditRecord.id).limit(VERIFY_BATCH)
            if prev_id is not None:
                query = query.where(AuditRecord.id > prev_id)
            batch = list(s.scalars(query))
        for row in batch:
            checked += 1
            broken = _check(row, expected, prev_id)
            if broken is not None:
                return broken.model_copy(update={"checked": checked, "head_id": prev_id, "head_hash": expected})
            expected, prev_id = row.hash, row.id
            anchored = anchored or row.hash == anchor
        if len(batch) < VERIFY_BATCH:
            break
    head = None if prev_id is None else expected
    if not anchored:
        return AuditReport(
            ok=False,
            checked=checked,
            head_id=prev_id,
            head_hash=head,
            problem="truncated",
            detail=f"no entry has the anchor hash {anchor}: entries from it on were removed (or rewritten)",
        )
    return AuditReport(ok=True, checked=checked, head_id=prev_id, head_hash=head)
