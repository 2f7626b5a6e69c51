"""The audit log: an append-only record of every decision attempt, accepted or refused, in hash chains per run.

Each entry stores who tried what, when, through which channel, whether it was accepted (and if not, why),
the comment, and the SHA-256 of the decision data (``payload_hash``). Its ``hash`` is SHA-256 over all of
these fields, its ``chain`` and ``prev_hash``, the hash of the entry before it *in the same chain* (64 zeros
for a chain's first), so an entry that is edited, or deleted from the middle of its chain, breaks that
chain; :func:`verify` finds it.

**One chain per run, not one for the log.** A single chain needs a single lock: every decision of the
cluster would wait for every other one to commit. An entry instead joins its run's chain (the run's id), or
``approval:<id>`` for an approval created ahead that no run has taken yet, or ``-`` for an attempt naming
nothing that exists; :mod:`hitl.core.audit_chains` has the rules. Appends to one chain are serialised, so two
deciders on two approvals of the same run never chain onto the same predecessor; appends to two chains
never wait on each other. On PostgreSQL the lock of a run's chain is the run's row (``FOR NO KEY UPDATE``),
which a decision transaction holds already once it moved the run: nothing global on the decision path, and
nothing in PostgreSQL's shared lock table, so a deadline sweep of 10,000 runs takes 10,000 row locks, not
10,000 advisory locks (see :mod:`hitl.core.audit_chains`). On SQLite, hitl's ``BEGIN IMMEDIATE`` transactions already
let one
writer in at a time. The chain's lock is held until commit, so :func:`record` is called last in its
transaction.

**Anchors.** A chain cannot show that its newest entries were removed (or its newest one rewritten): what
is left is still a valid chain. The beat job ``hitl.anchor_audit`` (:func:`anchor`, every
``HITL_AUDIT_ANCHOR_INTERVAL`` s) appends to the ``anchor`` chain an entry naming the head (id and hash) of
every chain that got entries since the previous anchor; :func:`verify` checks that each head an anchor names
is still there with that hash, so a run chain cut or rewritten before its last anchor is found. What anchors
cannot show is the anchor chain's own newest entries removed: keep the head hash :func:`verify` prints (the
anchor chain's head) somewhere else (a ticket, a log shipper, a notary) and pass it later as ``anchor``.

**Legacy entries.** The entries written before migration 0005 formed one chain over the whole log; the
migration puts them in chain ``legacy``, whose hashes are computed, as they were, without ``chain``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session

from approvals.errors import InfrastructureError
from approvals.models import Approval, AuditRecord, utcnow
from approvals.tables import not_indexed
from approvals.transitions import on_postgresql
from hitl.core.audit_chains import (
    ANCHOR_CHAIN,
    GENESIS,
    HASHED_FIELDS,
    LEGACY_CHAIN,
    STRAY_CHAIN,
    TABLE,
    anchor_payload,
    append_one,
    canonical_json,
    entry_hash,
    heads,
    lock_named,
    parse_anchor,
    payload_hash,
    place,
)
from hitl.core.audit_verify import AuditReport, verify
from hitl.infra.db import read_session, session_scope

__all__ = [
    "ANCHOR_ACTOR",
    "ANCHOR_CHAIN",
    "GENESIS",
    "HASHED_FIELDS",
    "LEGACY_CHAIN",
    "STRAY_CHAIN",
    "AuditEntry",
    "AuditReport",
    "anchor",
    "canonical_json",
    "entries",
    "entry_fields",
    "entry_hash",
    "payload_hash",
    "record",
    "record_many",
    "record_refused",
    "verify",
]

#: A Core INSERT (one statement; the ORM's unit of work costs more than the statement on the decision path).
_INSERT_ENTRY = insert(TABLE).returning(TABLE.c.id)
#: Actor of the anchor entries.
ANCHOR_ACTOR = "hitl:anchor"

log = logging.getLogger(__name__)


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
    #: The chain it belongs to: a run id, ``approval:<id>``, ``-``, ``anchor`` or ``legacy``.
    chain: str
    prev_hash: str
    hash: str


def _clip(column: str, value: str | None) -> str | None:
    """Cut ``value`` to the length of its column (an attempt with a 300-character id is still recorded)."""
    length = getattr(TABLE.c[column].type, "length", None)
    return value[:length] if value is not None and length else value


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
    """Append one entry to its chain in ``session``'s transaction; return its id.

    Call it last in the transaction (see the module docstring): it locks the entry's chain until commit.

    Args:
        action: what was attempted: ``decide``, ``timeout``, ``cancel``.
        actor: who attempted it (``hitl:deadline`` for the deadline sweep).
        channel: where it came from: ``cli``, ``api``, ``http``, ``link``, ``inbox``, ``deadline``.
        accepted: whether it took effect; ``reason`` says why not.
        approval_id, run_id: what it was about; ``run_id`` is looked up from the approval when not given.
            They choose the chain (:func:`hitl.core.audit_chains.place`).
        outcome: the outcome asked for (``approved``, ``rejected``, ``timed_out``, ``cancelled``).
        comment: the person's comment.
        payload: the decision data; only its SHA-256 is stored (:func:`payload_hash`).
    """
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
    session.flush()  # what the caller added goes first (the entry may refer to it)
    [(chain, fields["run_id"])] = place(session, [(fields["run_id"], fields["approval_id"])])
    fields["chain"] = chain
    if on_postgresql(session) and (entry_id := append_one(session, fields)) is not None:
        return entry_id
    fields["prev_hash"] = heads(session, [chain]).get(chain, GENESIS)
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
    """Return the fields of an entry, stamped now, before it is placed in a chain (for :func:`record_many`).

    Arguments as for :func:`record`.
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

    The deadline sweep times out thousands of approvals per transaction, each in its run's chain: the
    chains are placed and locked, and their heads read, in a few statements for all of them (one per 1,000
    chains), then one multi-row INSERT writes the entries. Entries of one chain chain onto each other in
    list order. The same rule as :func:`record`: call it last.
    """
    if not items:
        return
    placed = place(session, [(f["run_id"], f["approval_id"]) for f in items])
    prev = heads(session, sorted({p.chain for p in placed}))
    rows = []
    for fields, (chain, run_id) in zip(items, placed, strict=True):
        row = {**fields, "run_id": run_id, "chain": chain, "prev_hash": prev.get(chain, GENESIS)}
        row["hash"] = prev[chain] = entry_hash(row)
        rows.append(row)
    session.execute(insert(TABLE), rows)  # executed in list order: ids follow each chain


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


def anchor() -> int | None:
    """Append an anchor: one entry to the ``anchor`` chain naming the head of every chain that changed.

    A chain changed when it got entries since the previous anchor. The entry's ``comment`` holds the
    canonical JSON of :func:`hitl.core.audit_chains.anchor_payload`: the ``(chain, head id, head hash)`` of each,
    and the ids it read up to. It reads the entries after the ``through`` of the anchor *before* the
    previous one: on PostgreSQL an entry can commit after an anchor read the log with an id below the
    largest it saw (ids are taken at insert, entries become visible at commit), and the next anchor then
    names it. An entry that takes longer than one anchor interval from insert to commit is named with its
    chain's next entry only.

    Returns:
        The new entry's id, or None when no chain changed (nothing is appended).
    """
    with session_scope() as s:
        lock_named(s, ANCHOR_CHAIN)
        last = s.execute(
            select(TABLE.c.hash, TABLE.c.comment)
            .where(TABLE.c.chain == ANCHOR_CHAIN)
            .order_by(TABLE.c.id.desc())
            .limit(1)
        ).one_or_none()
        named, through, after = ({}, 0, 0) if last is None else _previous(last.comment)
        newest = (
            select(func.max(TABLE.c.id).label("id"))
            .where(TABLE.c.id > after, not_indexed(TABLE.c.chain) != ANCHOR_CHAIN)  # the primary key's range
            .group_by(not_indexed(TABLE.c.chain))
            .subquery()
        )
        found = s.execute(select(TABLE.c.chain, TABLE.c.id, TABLE.c.hash).join(newest, TABLE.c.id == newest.c.id))
        changed = sorted((chain, entry_id, hash_) for chain, entry_id, hash_ in found if named.get(chain) != entry_id)
        if not changed:
            return None
        payload = anchor_payload(changed, max(through, *(entry_id for _, entry_id, _ in changed)), through)
        fields = entry_fields(
            action="anchor",
            actor=ANCHOR_ACTOR,
            channel="beat",
            accepted=True,
            approval_id=None,
            run_id=None,
            comment=canonical_json(payload).decode(),
            payload=payload,
        )
        fields["chain"] = ANCHOR_CHAIN
        fields["prev_hash"] = GENESIS if last is None else last.hash
        entry_id = int(s.execute(_INSERT_ENTRY, {**fields, "hash": entry_hash(fields)}).scalar_one())
    log.info("audit anchor %s names the heads of %d chains", entry_id, len(changed))
    return entry_id


def _previous(comment: str | None) -> tuple[dict[str, int], int, int]:
    """The previous anchor's heads (chain → head id), its ``through`` and its ``rescan_after``."""
    try:
        named, through, after = parse_anchor(comment)
    except ValueError:  # a forged or damaged anchor (verify reports it): read the whole log again
        log.warning("the newest audit anchor has no readable payload; anchoring every chain")
        return {}, 0, 0
    return {chain: entry_id for chain, entry_id, _ in named}, through, after


def _entry(row: AuditRecord) -> AuditEntry:
    return AuditEntry.model_validate(row, from_attributes=True)


def entries(run_id: str | None = None, approval_id: str | None = None, chain: str | None = None) -> list[AuditEntry]:
    """Return audit entries, oldest first: all of them, or those of one run, one approval and/or one chain.

    A run's entries are its chain, with the entries on its approvals recorded before the run took them
    (approvals created ahead, see :mod:`hitl.core.lookback`; chain ``approval:<id>``) and its entries from before
    migration 0005 (chain ``legacy``).
    """
    query = select(AuditRecord).order_by(AuditRecord.id)
    if run_id is not None:
        of_run = select(Approval.id).where(Approval.run_id == run_id)
        query = query.where(
            or_(AuditRecord.chain == run_id, AuditRecord.run_id == run_id, AuditRecord.approval_id.in_(of_run))
        )
    if approval_id is not None:
        query = query.where(AuditRecord.approval_id == approval_id)
    if chain is not None:
        query = query.where(AuditRecord.chain == chain)
    with read_session() as s:
        return [_entry(row) for row in s.scalars(query)]
