"""The audit log's chains: which chain an entry belongs to, the lock that serialises appends to it, its head.

Chains (see :mod:`hitl.core.audit` for why there are many):

- a run's id, for every entry about a run that exists, or about an approval a run has taken;
- ``approval:<id>``, for an entry about an approval no run has taken yet (created ahead, :mod:`hitl.core.lookback`);
- ``-`` (:data:`STRAY_CHAIN`), for an attempt that names no run or approval that exists;
- ``anchor`` (:data:`ANCHOR_CHAIN`), the periodic anchors (:func:`hitl.core.audit.anchor`);
- ``legacy`` (:data:`LEGACY_CHAIN`), the single chain of the entries written before migration 0005; nothing is
  appended to it any more, and its hashes leave ``chain`` out (they were computed before the column existed).

Locks, on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` lets one writer in at a time and needs none):

- a run's chain: the run's row, ``SELECT ... FOR NO KEY UPDATE``, the lock an ``UPDATE`` of the run takes;
- ``approval:<id>``: the approval's row, read again under the lock (a run may have taken it meanwhile). An
  approval a run has taken is read without a lock: its run never changes;
- ``-`` and ``anchor``: a transaction-scoped advisory lock on ``hashtextextended(chain, 0)``.

Why rows: a row lock is kept in the row, not in PostgreSQL's shared lock table, so the deadline sweep can
lock 10,000 runs in one transaction. 10,000 advisory locks could fill that table: it has
``max_locks_per_transaction`` times ``max_connections`` slots for all sessions together (6,400 by default),
and a full table fails transactions with "out of shared memory". Hashing chains into a fixed number of
advisory locks would bound that, but two runs sharing a slot would wait for each other. And they are rows
the transaction holds already: a decision locks its approval (the compare-and-set), then its run (moving
it), so locking the run for the audit entry waits for nothing new; the sweep has updated its runs. Rows are
locked in id order, approvals before runs, the order a decision takes them. ``FOR NO KEY UPDATE`` does not
conflict with the ``FOR KEY SHARE`` locks of foreign-key checks (an appender that inserted timeline or
outbox rows of the run first), so two appenders never deadlock upgrading from one to the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import LargeBinary, bindparam, func, insert, literal, select, text
from sqlalchemy.orm import Session

from approvals import tables
from approvals.models import Approval, Run
from approvals.transitions import CHUNK, locked_runs

TABLE = tables.audit

#: ``prev_hash`` of the first entry of a chain.
GENESIS = "0" * 64
#: The chain of the entries written before migration 0005 (one chain over all of them, by id).
LEGACY_CHAIN = "legacy"
#: The chain of the periodic anchors.
ANCHOR_CHAIN = "anchor"
#: The chain of attempts that name nothing that exists (an unknown approval id, an unknown run).
STRAY_CHAIN = "-"
#: Prefix of the chain of an approval no run has taken (yet).
APPROVAL_CHAIN_PREFIX = "approval:"
#: The fields ``hash`` covers (the canonical encoding sorts the keys, so the order here does not matter).
#: Entries of :data:`LEGACY_CHAIN` leave ``chain`` out.
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
    "chain",
    "prev_hash",
)


def canonical_json(value: Any) -> bytes:
    """Return ``value`` as canonical JSON: sorted keys, no whitespace, UTF-8 (not JSON: its ``str()``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def payload_hash(payload: Any) -> str:
    """Return the SHA-256 (hex) of the canonical JSON of ``payload`` (the decision data; None hashes ``null``)."""
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def entry_hash(fields: dict[str, Any]) -> str:
    """Return the hash of an entry: SHA-256 (hex) of the canonical JSON of its :data:`HASHED_FIELDS`.

    ``at`` is encoded as ISO 8601 in UTC with microseconds, so the hash survives a round trip through the
    database (PostgreSQL and SQLite both keep microseconds). An entry of :data:`LEGACY_CHAIN` is hashed
    without ``chain``, as it was before migration 0005 added the column.

    Raises:
        KeyError: a hashed field is missing from ``fields``.
    """
    return hashlib.sha256(_canonical_entry(fields)).hexdigest()


def _canonical_entry(fields: dict[str, Any]) -> bytes:
    """The canonical JSON :func:`entry_hash` hashes (``at`` in ISO 8601, UTC, microseconds)."""
    names = [n for n in HASHED_FIELDS if n != "chain" or fields["chain"] != LEGACY_CHAIN]
    values = {name: fields[name] for name in names}
    at: datetime = values["at"]
    values["at"] = at.astimezone(UTC).isoformat(timespec="microseconds")
    return canonical_json(values)


class Placed(NamedTuple):
    """Where an entry goes: its chain, and its ``run_id`` (the approval's run when the caller gave none)."""

    chain: str
    run_id: str | None


def place(session: Session, about: Sequence[tuple[str | None, str | None]]) -> list[Placed]:
    """Return the chain of each entry and lock the chains until the end of ``session``'s transaction.

    Args:
        about: one ``(run_id, approval_id)`` per entry, as the caller names them.

    Returns:
        One :class:`Placed` per entry, in order. An entry goes to the chain of ``run_id`` when that run
        exists; with no ``run_id``, to the chain of its approval's run, or ``approval:<id>`` when no run has
        taken it; else (an unknown run or approval, or neither) to :data:`STRAY_CHAIN`.

    A few statements whatever the number of entries: one per :data:`~approvals.transitions.CHUNK` approvals
    looked up and per chunk of runs; the locks are taken approvals first, then runs, in id order (see the
    module docstring).
    """
    approvals = _runs_of(session, sorted({a for r, a in about if r is None and a is not None}), lock=False)
    # An approval's run never changes once set; one that no run has taken is locked (its chain), and read again.
    approvals.update(_runs_of(session, sorted(a for a, r in approvals.items() if r is None), lock=True))
    named = {r for r, a in about if r is not None} | {r for r in approvals.values() if r is not None}
    runs = named & locked_runs(session)  # rows this transaction updated: they exist and are locked already
    wanted = sorted(named - runs)
    for i in range(0, len(wanted), CHUNK):
        of_runs = select(Run.id).where(Run.id.in_(wanted[i : i + CHUNK])).order_by(Run.id)
        runs.update(session.scalars(of_runs.with_for_update(key_share=True)))
    placed = []
    for run_id, approval_id in about:
        if run_id is None and approval_id is not None:
            run_id = approvals.get(approval_id)
            if run_id is None and approval_id in approvals:
                placed.append(Placed(APPROVAL_CHAIN_PREFIX + approval_id, None))
                continue
        placed.append(Placed(run_id if run_id in runs else STRAY_CHAIN, run_id))
    if any(p.chain == STRAY_CHAIN for p in placed):
        lock_named(session, STRAY_CHAIN)
    return placed


def _runs_of(session: Session, approval_ids: list[str], *, lock: bool) -> dict[str, str | None]:
    """The run id of each of ``approval_ids`` that exists (None: no run took it), their rows locked if ``lock``."""
    found: dict[str, str | None] = {}
    for i in range(0, len(approval_ids), CHUNK):
        query = select(Approval.id, Approval.run_id).where(Approval.id.in_(approval_ids[i : i + CHUNK]))
        if lock:
            query = query.order_by(Approval.id).with_for_update(key_share=True)
        found.update((a, r) for a, r in session.execute(query))
    return found


def lock_named(session: Session, chain: str) -> None:
    """Lock a chain that has no row (:data:`STRAY_CHAIN`, :data:`ANCHOR_CHAIN`) until the end of the transaction.

    On PostgreSQL a transaction-scoped advisory lock on the chain name's 64-bit hash; on SQLite nothing (the
    transaction already holds the write lock).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:chain, 0))"), {"chain": chain})


#: The newest entry's hash of one chain (built once: a decision reads it every time).
_NEWEST = select(TABLE.c.hash).where(TABLE.c.chain == bindparam("chain")).order_by(TABLE.c.id.desc()).limit(1)


def heads(session: Session, chains: Sequence[str]) -> dict[str, str]:
    """Return the hash of the newest entry of each of ``chains`` that has entries (call it under their locks).

    One statement for one chain (``ORDER BY id DESC LIMIT 1`` on the ``(chain, id)`` index), else one per
    :data:`~approvals.transitions.CHUNK` chains (the largest id per chain, from the same index).
    """
    if len(chains) == 1:
        [chain] = chains
        found = session.scalar(_NEWEST, {"chain": chain})
        return {} if found is None else {chain: found}
    unique = sorted(set(chains))
    result: dict[str, str] = {}
    for i in range(0, len(unique), CHUNK):
        newest_ids = (
            select(func.max(TABLE.c.id)).where(TABLE.c.chain.in_(unique[i : i + CHUNK])).group_by(TABLE.c.chain)
        )
        found = session.execute(select(TABLE.c.chain, TABLE.c.hash).where(TABLE.c.id.in_(newest_ids)))
        result.update((chain, hash_) for chain, hash_ in found)
    return result


#: The one-statement append (PostgreSQL): the head read and the INSERT in one statement, the entry's hash
#: computed by the server from the canonical JSON around ``prev_hash`` (:func:`append_one`).
_HEAD = select(func.coalesce(_NEWEST.scalar_subquery(), literal(GENESIS)).label("prev")).subquery("head")
_APPEND = (
    insert(TABLE)
    .from_select(
        [*(n for n in HASHED_FIELDS if n != "prev_hash"), "prev_hash", "hash"],
        select(
            *(bindparam(n, type_=TABLE.c[n].type) for n in HASHED_FIELDS if n != "prev_hash"),
            _HEAD.c.prev,
            func.encode(
                func.sha256(
                    bindparam("before", type_=LargeBinary)
                    .op("||")(func.convert_to(_HEAD.c.prev, literal("UTF8")))
                    .op("||")(bindparam("after", type_=LargeBinary))
                ),
                literal("hex"),
            ),
        ).select_from(_HEAD),
    )
    .returning(TABLE.c.id)
)
_PREV_MARK = b'"prev_hash":"' + GENESIS.encode() + b'"'


def append_one(session: Session, fields: dict[str, Any]) -> int | None:
    """Append one entry to its chain in one statement (PostgreSQL, under the chain's lock); return its id.

    The same entry :func:`heads` and an INSERT would write, with one round trip fewer: the head is read by a
    subquery of the INSERT, and the hash is ``sha256(before || head || after)`` on the server (``sha256`` is
    built in since PostgreSQL 11), where ``before`` and ``after`` are the entry's canonical JSON
    (:func:`entry_hash`) on each side of the ``prev_hash`` value. The statement is later than the one that took
    the chain's lock, so under READ COMMITTED it sees every entry committed before the lock was granted.

    Args:
        fields: :data:`HASHED_FIELDS` but ``prev_hash`` (``chain`` set by :func:`place`; not the legacy chain).

    Returns:
        The entry's id, or None when the canonical JSON does not split around ``prev_hash`` exactly once (the
        caller then appends in two statements).
    """
    encoded = _canonical_entry({**fields, "prev_hash": GENESIS})
    before, mark, after = encoded.partition(_PREV_MARK)
    if not mark or _PREV_MARK in after:
        return None
    params = {**fields, "before": before + b'"prev_hash":"', "after": b'"' + after}
    return int(session.execute(_APPEND, params).scalar_one())


def anchor_payload(heads: Sequence[tuple[str, int, str]], through: int, rescan_after: int) -> dict[str, Any]:
    """Return what an anchor entry stores (as canonical JSON, in its ``comment``).

    Args:
        heads: ``(chain, head id, head hash)`` of every chain that changed since the previous anchor.
        through: the largest entry id the anchor saw.
        rescan_after: the next anchor reads the entries after this id again (the ``through`` of the previous
            anchor), to catch entries that committed after this anchor read, with ids below ``through``.
    """
    return {"heads": [list(h) for h in heads], "through": through, "rescan_after": rescan_after}


def parse_anchor(comment: str | None) -> tuple[list[tuple[str, int, str]], int, int]:
    """Return ``(heads, through, rescan_after)`` of an anchor entry's ``comment`` (see :func:`anchor_payload`).

    Raises:
        ValueError: ``comment`` is not an anchor's payload.
    """
    try:
        payload = json.loads(comment or "")
        found = [(str(c), int(i), str(h)) for c, i, h in payload["heads"]]
        return found, int(payload["through"]), int(payload["rescan_after"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not an anchor's payload: {exc}") from None
