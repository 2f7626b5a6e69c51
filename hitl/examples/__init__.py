"""The sample workflows that ship with hitl, for ``hitl demo`` and the docs (importing this package registers them).

- ``content-review`` (:mod:`hitl.examples.content`): draft, editor review, publish; revise on rejection.
- ``db-change`` (:mod:`hitl.examples.dbchange`): a validated change to catalogue rows, applied only on approval.

``demo.json`` (beside them) is the plan ``hitl demo`` runs. The engine does not import them: a deployment lists
them in ``HITL_WORKFLOW_MODULES`` (``hitl.examples``) or writes its own.
"""

from __future__ import annotations

from hitl.examples import content, dbchange

__all__ = ["content", "dbchange"]
