"""What a wait asks, validated when a run starts: durations, the decision schema, the approval policy.

A ``hitl.wait_for_approval.s(...)`` signature in a workflow is turned into a *wait spec* (a JSON-safe dict) by
:func:`wait_spec` when the run is started (:mod:`hitl.delivery.canvas`), so a bad timeout, default or policy is
refused by
``hitl start`` (exit 2, nothing created) and never fails a run later at its wait.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from approvals.errors import InvalidPayload
from approvals.policy import FAIL_DEFAULT, check_decision_schema
from approvals.schemas import ApprovalPolicy, Outcome
from hitl.infra.settings import get_settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
#: The longest duration a wait, reminder or escalation may declare: ten years, in seconds (a deadline
#: further out is a mistake, and ``datetime`` overflows a few thousand years on).
MAX_DURATION_SECONDS = 10 * 365 * 86400

#: The options ``wait_for_approval.s(...)`` takes (anything else is refused when the run starts).
WAIT_OPTIONS = frozenset(
    {
        "key",
        "timeout",
        "assignees",
        "on_reject",
        "on_timeout",
        "default",
        "decision",
        "quorum",
        "stages",
        "any_rejection_rejects",
        "forbid_requester",
        "remind_after",
        "remind_every",
        "escalate_after",
        "escalate_to",
        "default_data",
        "idempotency_key",
    }
)


def parse_duration(value: str | float | int | timedelta) -> timedelta:
    """Parse a duration: a number of seconds, a ``timedelta``, or ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"``.

    Raises:
        InvalidPayload: the value is not a positive, finite duration in one of these forms, or it is longer than
            :data:`MAX_DURATION_SECONDS` (ten years).
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidPayload(f"not a duration: {value!r} (use seconds or 30s, 15m, 1h, 2d, 1w)")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidPayload(f"not a duration: {value!r} (use seconds or 30s, 15m, 1h, 2d, 1w)")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidPayload(f"a duration must be positive, not {value!r}")
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidPayload(f"a duration must be at most ten years, not {value!r}")
    return timedelta(seconds=seconds)


def decision_schema_of(decision: Any) -> dict[str, Any] | None:
    """Return the JSON Schema of a wait's ``decision`` option: a pydantic model class or a schema dict.

    Raises:
        InvalidPayload: neither, or not a valid JSON Schema of an object.
    """
    if decision is None:
        return None
    if isinstance(decision, type) and issubclass(decision, BaseModel):
        decision = decision.model_json_schema()
    if not isinstance(decision, dict):
        raise InvalidPayload("decision must be a pydantic model class or a JSON Schema dict")
    check_decision_schema(decision)
    return decision


def policy_of(**values: Any) -> ApprovalPolicy:
    """Return the :class:`ApprovalPolicy` of a wait's options (durations as seconds or ``"1h"`` forms).

    Raises:
        InvalidPayload: a bad duration, quorum or list, or an option that needs another one.
    """
    for name in ("remind_after", "remind_every", "escalate_after"):
        if values.get(name) is not None:
            values[name] = parse_duration(values[name]).total_seconds()
    try:
        policy = ApprovalPolicy(**values)
    except ValidationError as exc:
        raise InvalidPayload(f"invalid approval policy: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    if policy.escalate_after and not policy.escalate_to:
        raise InvalidPayload("escalate_after needs escalate_to (whom to escalate to)")
    if policy.remind_every and not policy.remind_after:
        raise InvalidPayload("remind_every needs remind_after (when the first reminder goes)")
    return policy


def wait_spec(options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options of one ``wait_for_approval.s(...)`` and return its wait spec.

    Args:
        options: the signature's kwargs (``key``, ``timeout``, ``assignees``, ...; see
            :func:`hitl.wait_for_approval`). ``on_reject`` and ``on_timeout`` are left to the caller
            (:mod:`hitl.delivery.canvas` compiles them) and not included.

    Returns:
        ``{"key", "timeout" (seconds), "assignees", "default", "decision_schema", "policy" (a dumped
        :class:`ApprovalPolicy`, defaults left out), "idempotency_key"}``: JSON-safe.

    Raises:
        InvalidPayload: an unknown option, no ``key``, a bad timeout, default, policy or decision schema.
    """
    unknown = sorted(set(options) - WAIT_OPTIONS - {"run_id"})
    if unknown:
        raise InvalidPayload(f"wait_for_approval does not take {', '.join(unknown)}")
    key = options.get("key")
    if not isinstance(key, str) or not key.strip():
        raise InvalidPayload("wait_for_approval needs key= (a name for this waitpoint, e.g. 'editor-review')")
    timeout = options.get("timeout")
    seconds = parse_duration(timeout).total_seconds() if timeout is not None else float(get_settings().default_timeout)
    default = options.get("default")
    if default is not None and default not in (Outcome.APPROVED, Outcome.REJECTED, FAIL_DEFAULT):
        raise InvalidPayload(f"default must be 'approved', 'rejected' or 'failed', not {default!r}")
    policy = policy_of(
        quorum=options.get("quorum", 1),
        stages=options.get("stages") or [],
        any_rejection_rejects=options.get("any_rejection_rejects", True),
        forbid_requester=options.get("forbid_requester", False),
        remind_after=options.get("remind_after"),
        remind_every=options.get("remind_every"),
        escalate_after=options.get("escalate_after"),
        escalate_to=list(options.get("escalate_to") or ()),
        default_data=options.get("default_data"),
    )
    assignees = list(options.get("assignees") or ())
    if policy.stages:
        assignees = policy.stages[0]
    idempotency_key = options.get("idempotency_key")
    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise InvalidPayload("idempotency_key must be a string")
    return {
        "key": key,
        "timeout": seconds,
        "assignees": [str(a) for a in assignees],
        "default": default,
        "decision_schema": decision_schema_of(options.get("decision")),
        "policy": policy.model_dump(exclude_defaults=True),
        "idempotency_key": idempotency_key,
    }
