"""Alembic migrations of hitl's tables (``hitl db upgrade``).

:data:`HEAD_REVISION` names the latest one, so that a process whose database is already there needs one query and
no Alembic import to know it (:func:`hitl.infra.db.get_engine`); a test checks it against the scripts.
"""

#: The revision of the latest migration in ``versions/`` (keep it in step when adding one).
HEAD_REVISION = "0005"
