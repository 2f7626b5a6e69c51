"""Identifiers of runs and approvals: 16 lowercase hex characters (64 random bits)."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """Return a new random id, e.g. ``'3f9c0a1be2d47a58'``."""
    return secrets.token_hex(8)
