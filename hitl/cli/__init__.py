"""The ``hitl`` command line: one click group with one module per command group (see :mod:`hitl.cli.main`)."""

from hitl.cli.main import cli, main

__all__ = ["cli", "main"]
