"""Rendering runs and approvals for people (rich tables) and for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from approvals.schemas import ApprovalView, EventView, NotificationView, RunView
from hitl.cli import plain
from hitl.cli.plain import ago, short

if TYPE_CHECKING:
    from hitl.core.audit import AuditEntry

#: Wide output when piped (logs, CI), the terminal's width otherwise.
console = Console(highlight=False, width=None if sys.stdout.isatty() else plain.PIPE_WIDTH)


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Print ``value`` as indented JSON on stdout, non-ASCII text as it is (UTF-8, not ``\\uXXXX`` escapes)."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    plain.print_json(data)


def notifications_table(rows: list[NotificationView]) -> Table:
    """A table of notices: approval, kind, number, recipients, attempts, state, last error."""
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "APPROVAL", "KIND", "SEQ", "RECIPIENTS", "ATTEMPTS", "STATE", "CREATED", "LAST ERROR"):
        table.add_column(col)
    for n in rows:
        state = f"sent {ago(n.sent_at)}" if n.sent_at else n.state if n.state == "failed" else "unsent"
        table.add_row(
            str(n.id),
            n.approval_id,
            n.kind.value,
            str(n.seq),
            short(", ".join(n.recipients) or "-", 40),
            str(n.attempts),
            state,
            ago(n.created_at),
            short(n.last_error or "-", 60),
        )
    return table


def _event_text(e: EventView) -> str:
    d = e.detail
    if e.kind == "input_resolved":
        by = f" by {d.get('actor')}" if d.get("actor") else ""
        comment = f" — {d['comment']}" if d.get("comment") else ""
        default = " (wait's default)" if d.get("defaulted") else ""
        return f"{e.name}: {d.get('outcome')}{default}{by}{comment}"
    if e.kind == "reminder_sent":
        return f"{e.name}: reminder {d.get('reminder')} to {', '.join(d.get('recipients') or []) or 'nobody'}"
    if e.kind == "escalated":
        return f"{e.name}: escalated to {', '.join(d.get('escalate_to') or [])}"
    if e.kind == "waiting_for_input":
        return f"{e.name}: approval {d.get('approval_id')} for {','.join(d.get('assignees') or []) or 'anyone'}"
    if e.kind in ("step_failed", "run_finished") and (d.get("error") or d.get("reason")):
        return f"{e.name}: {d.get('error') or d.get('reason')}"
    if e.kind == "step_finished" and e.started_at is not None:
        return f"{e.name} ({(e.at - e.started_at).total_seconds() * 1000:.0f} ms)"
    return e.name


def timeline_table(run: RunView) -> Table:
    """A run's timeline: time, what happened, detail."""
    table = Table(box=None, pad_edge=False)
    table.add_column("AT (UTC)")
    table.add_column("EVENT")
    table.add_column("DETAIL")
    for e in run.timeline:
        table.add_row(e.at.strftime("%H:%M:%S.%f")[:-3], e.kind.value, _event_text(e))
    return table


def show_approval(a: ApprovalView) -> None:
    """Print one approval: what is asked, to whom, by when, and the decision if any."""
    console.print(f"[bold]Approval {a.id}[/]  {a.status.value}")
    console.print(f"run {a.run_id} ({a.workflow}), waitpoint {a.key!r}", markup=False)
    console.print(f"assignees: {', '.join(a.assignees) or 'anyone'}", markup=False)
    console.print(
        f"created {a.created_at.isoformat()} ({ago(a.created_at)}), "
        f"deadline {a.deadline.isoformat()} ({ago(a.deadline)})"
    )
    console.print("subject:")
    console.print(json.dumps(a.subject, indent=2, default=str, ensure_ascii=False), markup=False)
    if a.decision:
        d = a.decision
        console.print(
            f"decision: {d.outcome.value} by {d.actor} via {d.channel} at {d.decided_at.isoformat()}"
            + (f" — {d.comment}" if d.comment else ""),
            markup=False,
        )
        if d.data:
            console.print(f"data: {json.dumps(d.data, ensure_ascii=False)}", markup=False)


def show_run(run: RunView) -> None:
    """Print one run: status, payload, result, then its timeline."""
    console.print(f"[bold]Run {run.id}[/]  {run.workflow}  {run.status.value}")
    console.print(
        f"created {run.created_at.isoformat()}"
        + (f", finished {run.finished_at.isoformat()}" if run.finished_at else "")
    )
    console.print(f"payload: {short(run.payload, 200)}", markup=False)
    if run.result is not None:
        console.print(f"result: {short(run.result, 200)}", markup=False)
    if run.error:
        console.print(f"reason: {run.error}", markup=False)
    console.print(timeline_table(run))


def audit_table(rows: Sequence[AuditEntry]) -> Table:
    """A table of audit entries: id, chain, time, who, through which channel, what, accepted or not, why, short
    hash."""
    table = Table(box=None, pad_edge=False)
    columns = ("ID", "CHAIN", "AT (UTC)", "ACTOR", "CHANNEL", "ACTION", "OUTCOME", "RESULT", "REASON / COMMENT", "HASH")
    for col in columns:
        table.add_column(col)
    for e in rows:
        table.add_row(
            str(e.id),
            Text(e.chain),
            e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            Text(e.actor),
            e.channel,
            e.action,
            e.outcome or "-",
            "accepted" if e.accepted else "refused",
            Text(short((e.comment if e.accepted else e.reason) or "-", 80)),
            e.hash[:12],
        )
    return table
