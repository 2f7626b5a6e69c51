"""Approver groups: who is in a group, and whether a person is among a list of assignees.

A group's members are the union of ``HITL_GROUPS`` (settings, JSON) and the ``hitl_group_members`` table
(``hitl groups add``). An assignee that names no group is a user. Groups do not nest.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from approvals.errors import InvalidPayload
from approvals.models import GroupMember
from hitl.infra.db import read_session, session_scope
from hitl.infra.settings import get_settings


def members(group: str) -> set[str]:
    """Return the members of ``group`` (empty when no group has that name)."""
    found = set(get_settings().groups.get(group, []))
    with read_session() as s:
        found.update(s.scalars(select(GroupMember.member).where(GroupMember.group == group)))
    return found


def expand(assignees: Iterable[str], session: Session | None = None) -> set[str]:
    """Return the users named by ``assignees``: each group replaced by its members, users kept as they are.

    Reads in ``session``'s transaction when given (a decision's, so that it takes no second connection), else
    in a read-only one.
    """
    names = list(assignees)
    table = get_settings().groups
    of_groups = select(GroupMember.group, GroupMember.member).where(GroupMember.group.in_(names))
    if session is not None:
        rows = session.execute(of_groups).all()
    else:
        with read_session() as s:
            rows = s.execute(of_groups).all()
    db_groups: dict[str, set[str]] = {}
    for group, member in rows:
        db_groups.setdefault(group, set()).add(member)
    users: set[str] = set()
    for name in names:
        if name in table or name in db_groups:
            users.update(table.get(name, []))
            users.update(db_groups.get(name, set()))
        else:
            users.add(name)
    return users


def is_assignee(actor: str, assignees: Iterable[str], session: Session | None = None) -> bool:
    """Whether ``actor`` is one of ``assignees`` or a member of one of them (an empty list admits anyone).

    ``session``: as for :func:`expand`.
    """
    names = list(assignees)
    return not names or actor in expand(names, session)


def add_member(group: str, member: str) -> bool:
    """Add ``member`` to ``group`` in the database; return False if they were already in it.

    Raises:
        InvalidPayload: an empty group or member name.
    """
    if not group.strip() or not member.strip():
        raise InvalidPayload("a group and a member name are needed")
    with session_scope() as s:
        if s.get(GroupMember, (group, member)) is not None:
            return False
        s.add(GroupMember(group=group, member=member))
    return True


def remove_member(group: str, member: str) -> bool:
    """Remove ``member`` from ``group`` in the database; return whether they were in it."""
    with session_scope() as s:
        result = s.execute(delete(GroupMember).where(GroupMember.group == group, GroupMember.member == member))
        return bool(getattr(result, "rowcount", 0))


def all_groups() -> dict[str, list[str]]:
    """Return every group with its members (settings and database), sorted."""
    out: dict[str, set[str]] = {g: set(m) for g, m in get_settings().groups.items()}
    with read_session() as s:
        for group, member in s.execute(select(GroupMember.group, GroupMember.member)):
            out.setdefault(group, set()).add(member)
    return {g: sorted(m) for g, m in sorted(out.items())}
