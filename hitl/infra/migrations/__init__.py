"""Alembic migrations of hitl's tables (``hitl db upgrade``)."""
