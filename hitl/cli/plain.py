"""The list commands' output without rich: relative times, JSON, and tables laid out as rich lays them out.

``hitl approvals list`` and ``hitl runs list`` print a table of short one-line cells. Importing rich costs such a
command a tenth of its wall time, so this module prints the table itself, exactly as ``rich.table.Table(box=None,
pad_edge=False)`` does when it fits (each column as wide as its widest cell, two spaces between columns, header
in bold on a terminal). A table that does not fit the width, or a cell that is not printable ASCII on one line
(rich measures wide characters and wraps), is handed to rich, so the output
never differs from rich's. ``tests/unit/test_cli_tables.py`` compares both byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from approvals.tables import utcnow

#: Width of the output when it is not a terminal (logs, CI, pipes); rich's console in hitl uses the same.
PIPE_WIDTH = 160


def output_width() -> int:
    """The width tables are laid out in: the terminal's, or :data:`PIPE_WIDTH` when stdout is not one."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else PIPE_WIDTH


def print_json(value: Any) -> None:
    """Print ``value`` (JSON-ready) as indented JSON on stdout, non-ASCII text as it is (UTF-8, not ``\\uXXXX``)."""
    print(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False))


def ago(t: datetime | str | None) -> str:
    """Return ``t`` (aware, or ISO 8601 text) as a short relative time (``"12s ago"``, ``"in 3m"``)."""
    if t is None:
        return "-"
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    seconds = (t - utcnow()).total_seconds()
    span = abs(seconds)
    text = (
        f"{span:.0f}s"
        if span < 120
        else f"{span / 60:.0f}m"
        if span < 7200
        else f"{span / 3600:.1f}h"
        if span < 172800
        else f"{span / 86400:.0f}d"
    )
    return f"in {text}" if seconds > 0 else f"{text} ago"


def short(value: Any, width: int = 60) -> str:
    """Return ``value`` as compact JSON (strings and non-ASCII text as they are), cut to ``width`` characters."""
    text = (
        value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    )
    return text if len(text) <= width else text[: width - 1] + "…"


APPROVAL_COLUMNS = ("ID", "RUN", "WORKFLOW", "KEY", "STATUS", "ASSIGNEES", "CREATED", "DEADLINE")
RUN_COLUMNS = ("RUN", "WORKFLOW", "STATUS", "CREATED", "FINISHED", "IDEMPOTENCY KEY")


def approval_cells(a: dict[str, Any]) -> list[str]:
    """One approval (``ApprovalView``'s JSON shape) as the cells of :data:`APPROVAL_COLUMNS`."""
    return [
        a["id"],
        a["run_id"] or "-",
        a["workflow"] or "-",
        a["key"],
        a["status"],
        ",".join(a["assignees"]) or "-",
        ago(a["created_at"]),
        ago(a["deadline"]) if a["status"] == "pending" else "-",
    ]


def run_cells(r: dict[str, Any]) -> list[str]:
    """One run (``RunView``'s JSON shape) as the cells of :data:`RUN_COLUMNS`."""
    return [
        r["id"],
        r["workflow"],
        r["status"],
        ago(r["created_at"]),
        ago(r["finished_at"]),
        r["idempotency_key"] or "-",
    ]


def _plain(cell: str) -> bool:
    return cell.isascii() and cell.isprintable()


def layout(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, *, bold: bool = False) -> str | None:
    """The table as rich's ``Table(box=None, pad_edge=False)`` prints it in ``width`` columns, or None when rich
    would lay it out otherwise (too wide, or a cell that is not printable ASCII)."""
    if not all(_plain(c) for row in (headers, *rows) for c in row):
        return None
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    if sum(widths) + 2 * (len(widths) - 1) > width:
        return None

    def line(cells: Sequence[str], style: bool = False) -> str:
        padded = [c.ljust(w) for c, w in zip(cells, widths, strict=True)]
        if style:
            padded = [f"\x1b[1m{c}\x1b[0m" for c in padded]
        return "  ".join(padded)

    return "\n".join([line(headers, bold), *(line(r) for r in rows)]) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print the table on stdout: laid out here when it fits (:func:`layout`), else by rich."""
    tty = sys.stdout.isatty()
    text = layout(headers, rows, output_width(), bold=tty and not os.environ.get("NO_COLOR"))
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    for col in headers:
        table.add_column(col)
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    Console(highlight=False, width=None if tty else PIPE_WIDTH).print(table)
