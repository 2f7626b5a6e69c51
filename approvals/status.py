"""Status enums and the one table of allowed transitions for each.

Every status change in the database is a compare-and-set guarded by these tables: the UPDATE names the
statuses it may leave (``WHERE status IN (...)``) and the row count decides the winner
(see :mod:`approvals.transitions`).
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run of a workflow stands."""

    # Like Celery's PENDING without task_track_started, a run is not marked when its first step starts
    # (that would be one more write transaction per run).
    PENDING = "pending"  # created; its first step is queued or executing and has not finished
    RUNNING = "running"  # past its first step (or resumed by a decision): a step is queued or executing
    WAITING = "waiting"  # parked at a waitpoint; only database rows hold it
    SUCCEEDED = "succeeded"  # the chain ran to its end
    REJECTED = "rejected"  # a step ended the run because a person said no
    TIMED_OUT = "timed_out"  # a step ended the run because a wait's deadline passed
    FAILED = "failed"  # a step raised after its retries were spent
    CANCELLED = "cancelled"  # an operator cancelled the run

    @property
    def terminal(self) -> bool:
        """True when no transition leaves this status."""
        return not RUN_TRANSITIONS[self]


class ApprovalStatus(StrEnum):
    """Where one approval (one waitpoint of a run) stands."""

    PENDING = "pending"  # waiting for a person or for its deadline
    APPROVED = "approved"  # a person approved it
    REJECTED = "rejected"  # a person rejected it
    TIMED_OUT = "timed_out"  # the deadline sweep resolved it
    CANCELLED = "cancelled"  # its run was cancelled while it was pending

    @property
    def terminal(self) -> bool:
        """True when no transition leaves this status."""
        return not APPROVAL_TRANSITIONS[self]


class StepStatus(StrEnum):
    """Where one delivery-independent step execution (keyed by its deterministic task id) stands."""

    STARTED = "started"  # begun (records of the earlier claim-first protocol only); any delivery may finish it
    FINISHED = "finished"  # returned; the chain goes on with its stored result
    WAITING = "waiting"  # a wait step that stored its approval and ended the chain
    REPLACED = "replaced"  # replaced by another canvas (Task.replace); the replacement is in the outbox
    STOPPED = "stopped"  # raised hitl.Stop: the run ended here
    FAILED = "failed"  # raised after its retries were spent

    @property
    def terminal(self) -> bool:
        """True when a new delivery of this step must not run its body again."""
        return not STEP_TRANSITIONS[self]


class EventKind(StrEnum):
    """Kinds of entries in a run's timeline."""

    CREATED = "created"  # the run row was written
    STEP_FINISHED = "step_finished"  # a step task returned
    STEP_FAILED = "step_failed"  # a step task raised after its retries
    STEP_SKIPPED = "step_skipped"  # a step found its run cancelled and did nothing
    WAITING = "waiting_for_input"  # a wait step stored an approval and ended the chain
    RESOLVED = "input_resolved"  # an approval was decided, timed out or cancelled
    FINISHED = "run_finished"  # the run reached a terminal status
    REFUSED = "decision_refused"  # a decision attempt was refused (not allowed); nothing else changed
    VOTED = "vote_recorded"  # one vote of several (quorum, sequential sign-off) was recorded
    REMINDED = "reminder_sent"  # the reminder sweep queued a reminder to the assignees
    ESCALATED = "escalated"  # the escalation group was added to the assignees and notified


class NotificationKind(StrEnum):
    """What a notice (a row of ``hitl_notifications``) is about."""

    REMINDER = "reminder"  # the assignees are reminded of a pending approval
    ESCALATION = "escalation"  # the escalation group was added to a pending approval's assignees


class Scope(StrEnum):
    """What an API key may do over HTTP."""

    READ = "read"  # read runs, approvals and their live events
    START = "start"  # start runs
    DECIDE = "decide"  # approve, reject or complete approvals, as the key's actor
    CANCEL = "cancel"  # cancel runs
    DELEGATE = "delegate"  # make signed links and approval-scoped tokens for other people


RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.WAITING,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.REJECTED,
            RunStatus.TIMED_OUT,
            RunStatus.CANCELLED,
        }
    ),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.WAITING,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.REJECTED,
            RunStatus.TIMED_OUT,
            RunStatus.CANCELLED,
        }
    ),
    # A resolved waitpoint with nothing after it ends the run directly with the outcome; a wait whose
    # deadline default is "failed" fails it.
    RunStatus.WAITING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.SUCCEEDED,
            RunStatus.REJECTED,
            RunStatus.TIMED_OUT,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
    ),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.REJECTED: frozenset(),
    RunStatus.TIMED_OUT: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}

APPROVAL_TRANSITIONS: dict[ApprovalStatus, frozenset[ApprovalStatus]] = {
    ApprovalStatus.PENDING: frozenset(
        {ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.TIMED_OUT, ApprovalStatus.CANCELLED}
    ),
    ApprovalStatus.APPROVED: frozenset(),
    ApprovalStatus.REJECTED: frozenset(),
    ApprovalStatus.TIMED_OUT: frozenset(),
    ApprovalStatus.CANCELLED: frozenset(),
}


STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    # (Records of the earlier claim-first protocol: any delivery may finish a STARTED step.)
    StepStatus.STARTED: frozenset(
        {
            StepStatus.STARTED,
            StepStatus.FINISHED,
            StepStatus.WAITING,
            StepStatus.REPLACED,
            StepStatus.STOPPED,
            StepStatus.FAILED,
        }
    ),
    StepStatus.REPLACED: frozenset(),
    StepStatus.FINISHED: frozenset(),
    StepStatus.WAITING: frozenset(),
    StepStatus.STOPPED: frozenset(),
    StepStatus.FAILED: frozenset(),
}


def run_sources(target: RunStatus) -> frozenset[RunStatus]:
    """Return the run statuses from which ``target`` may be reached."""
    return frozenset(s for s, allowed in RUN_TRANSITIONS.items() if target in allowed)


def approval_sources(target: ApprovalStatus) -> frozenset[ApprovalStatus]:
    """Return the approval statuses from which ``target`` may be reached."""
    return frozenset(s for s, allowed in APPROVAL_TRANSITIONS.items() if target in allowed)
