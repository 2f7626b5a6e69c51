"""``python -m hitl``: the same as the ``hitl`` command."""

from __future__ import annotations

from hitl.cli.main import main

main()
