"""Checking the audit log (``hitl audit verify``): every chain's hashes and links, then every anchor's heads.

The chains are walked in ``(chain, id)`` order on their index, :data:`VERIFY_BATCH` entries per short read
transaction (writers are not held up; entries appended meanwhile may or may not be checked), keeping one
chain's state at a time. Then each anchor entry (:func:`hitl.core.audit.anchor`) is read and every head it names
looked up by id: gone, the chain was cut after the anchor (``truncated``); there with another hash or in
another chain, it was rewritten (``edited``). See :mod:`hitl.core.audit` for the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from approvals.models import AuditRecord
from approvals.transitions import CHUNK
from hitl.core.audit_chains import ANCHOR_CHAIN, GENESIS, HASHED_FIELDS, TABLE, entry_hash, parse_anchor
from hitl.infra.db import read_session

#: Entries read per transaction by :func:`verify`.
VERIFY_BATCH = 1000
#: Anchor entries read per transaction by :func:`verify` (each may name thousands of heads).
ANCHOR_BATCH = 20

Problem = Literal["edited", "deleted_or_reordered", "truncated"]


class AuditReport(BaseModel):
    """What :func:`verify` found: whether every chain and anchor holds, and where the first break is if not."""

    ok: bool
    #: Entries checked (up to and including the first broken one).
    checked: int
    #: Id and hash of the anchor chain's newest entry (None before the first anchor): keep the hash elsewhere
    #: to detect later that the newest anchors were removed. On a break in a chain, of the last entry of that
    #: chain that fits.
    head_id: int | None
    head_hash: str | None
    #: Id of the first entry that does not fit its chain, or of the head an anchor names that is not there.
    broken_id: int | None = None
    #: ``edited``: its hash does not match its fields, or is not the hash an anchor names for it.
    #: ``deleted_or_reordered``: its ``prev_hash`` is not the hash of the entry before it in its chain (that
    #: entry was deleted, rewritten with a new hash, or moved). ``truncated``: a head an anchor names is gone
    #: (the chain's newest entries were deleted), or no entry has the hash given to :func:`verify`.
    problem: Problem | None = None
    detail: str | None = None
    #: The chain of the break: a run id, ``approval:<id>``, ``-``, ``anchor`` or ``legacy``.
    chain: str | None = None
    #: Chains checked.
    chains: int = 0


@dataclass
class _Walk:
    """What the walk over the chains has seen so far."""

    anchor: str | None
    checked: int = 0
    chains: int = 0
    anchored: bool = False
    head_id: int | None = None  # the anchor chain's newest entry
    head_hash: str | None = None

    def broken(
        self, entry_id: int, chain: str, problem: Problem, detail: str, head: tuple[int | None, str | None]
    ) -> AuditReport:
        return AuditReport(
            ok=False,
            checked=self.checked,
            chains=self.chains,
            head_id=head[0],
            head_hash=head[1],
            broken_id=entry_id,
            problem=problem,
            detail=detail,
            chain=chain,
        )


def verify(anchor: str | None = None) -> AuditReport:
    """Check every chain (each entry's hash and link to the one before it) and every anchor's heads.

    Args:
        anchor: a hash some entry must still have: the ``head_hash`` of an earlier report, kept elsewhere
            (the anchor chain's head; before migration 0005, the single chain's head, now chain ``legacy``).

    Returns:
        The report: ``ok`` with the anchor chain's head, or the first break (chains in ``(chain, id)``
        order, then the anchors, oldest first): its entry, chain, kind and a sentence.
    """
    walk = _Walk(anchor)
    broken = _walk_chains(walk) or _check_anchors(walk)
    if broken is not None:
        return broken
    head = {"checked": walk.checked, "chains": walk.chains, "head_id": walk.head_id, "head_hash": walk.head_hash}
    if anchor is not None and not walk.anchored:
        return AuditReport(
            ok=False,
            **head,
            problem="truncated",
            chain=ANCHOR_CHAIN,
            detail=f"no entry has the anchor hash {anchor}: entries from it on were removed (or rewritten)",
        )
    return AuditReport(ok=True, **head)


def _walk_chains(walk: _Walk) -> AuditReport | None:
    chain: str | None = None
    expected, prev_id = GENESIS, 0
    while True:
        query = select(AuditRecord).order_by(AuditRecord.chain, AuditRecord.id).limit(VERIFY_BATCH)
        if chain is not None:
            query = query.where(tuple_(AuditRecord.chain, AuditRecord.id) > tuple_(chain, prev_id))
        with read_session() as s:
            batch = list(s.scalars(query))
        for row in batch:
            if row.chain != chain:
                chain, expected, prev_id = row.chain, GENESIS, 0
                walk.chains += 1
            walk.checked += 1
            problem = _check(row, expected, prev_id)
            if problem is not None:
                return walk.broken(row.id, row.chain, problem[0], problem[1], (prev_id or None, expected))
            expected, prev_id = row.hash, row.id
            walk.anchored = walk.anchored or row.hash == walk.anchor
            if row.chain == ANCHOR_CHAIN:
                walk.head_id, walk.head_hash = row.id, row.hash
        if len(batch) < VERIFY_BATCH:
            return None


def _check(row: AuditRecord, expected_prev: str, prev_id: int) -> tuple[Problem, str] | None:
    """Return the problem with ``row`` given the hash it should chain onto, or None if it fits."""
    if row.prev_hash != expected_prev:
        after = f"the hash of entry {prev_id}" if prev_id else f"the start of chain {row.chain}"
        return "deleted_or_reordered", (
            f"entry {row.id} (chain {row.chain}): its prev_hash does not match {after} (an entry between them "
            "was deleted, or moved, or the one before was rewritten with a new hash)"
        )
    if entry_hash({name: getattr(row, name) for name in HASHED_FIELDS}) != row.hash:
        return "edited", (
            f"entry {row.id} (chain {row.chain}): its hash does not match its fields (it was edited after it "
            "was written)"
        )
    return None


def _check_anchors(walk: _Walk) -> AuditReport | None:
    after = 0
    while True:
        with read_session() as s:
            anchors = s.execute(
                select(TABLE.c.id, TABLE.c.comment)
                .where(TABLE.c.chain == ANCHOR_CHAIN, TABLE.c.id > after)
                .order_by(TABLE.c.id)
                .limit(ANCHOR_BATCH)
            ).all()
            for anchor_id, comment in anchors:
                broken = _check_anchor(s, walk, anchor_id, comment)
                if broken is not None:
                    return broken
        if len(anchors) < ANCHOR_BATCH:
            return None
        after = anchors[-1].id


def _check_anchor(s: Session, walk: _Walk, anchor_id: int, comment: str | None) -> AuditReport | None:
    """Check that every head anchor entry ``anchor_id`` names is there, in its chain, with its hash."""
    try:
        named, _, _ = parse_anchor(comment)
    except ValueError as exc:
        detail = f"entry {anchor_id} (chain {ANCHOR_CHAIN}): {exc}; it was forged with a valid hash"
        return walk.broken(anchor_id, ANCHOR_CHAIN, "edited", detail, (walk.head_id, walk.head_hash))
    for i in range(0, len(named), CHUNK):
        part = named[i : i + CHUNK]
        query = select(TABLE.c.id, TABLE.c.chain, TABLE.c.hash).where(TABLE.c.id.in_([h[1] for h in part]))
        found = {entry_id: (chain, hash_) for entry_id, chain, hash_ in s.execute(query)}
        for chain, entry_id, hash_ in part:
            there = found.get(entry_id)
            if there == (chain, hash_):
                continue
            newest = s.execute(
                select(TABLE.c.id, TABLE.c.hash).where(TABLE.c.chain == chain).order_by(TABLE.c.id.desc()).limit(1)
            ).one_or_none()
            head = (None, None) if newest is None else (newest.id, newest.hash)
            if there is None:
                ends = f"it now ends at entry {newest.id}" if newest is not None else "it has no entries left"
                detail = (
                    f"entry {entry_id}, the head of chain {chain} when anchor entry {anchor_id} was written, is "
                    f"gone: the chain's newest entries were deleted ({ends})"
                )
                return walk.broken(entry_id, chain, "truncated", detail, head)
            detail = (
                f"entry {entry_id} (chain {there[0]}) is not what anchor entry {anchor_id} names as the head of "
                f"chain {chain}: it was rewritten after the anchor was written"
            )
            return walk.broken(entry_id, chain, "edited", detail, head)
    return None
