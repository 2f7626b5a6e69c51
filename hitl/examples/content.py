"""The ``content-review`` workflow: draft from a topic, editor review, publish; revise on rejection.

Chain: ``draft | wait_for_approval(editor-review) | route_review``. On approval ``route_review`` is replaced by
``publish``; on rejection, while revisions remain, by ``revise | wait_for_approval | route_review`` with the
reviewer's comment; after ``max_revisions`` rejections the run stops as rejected; at the deadline it stops
as timed out. The draft generator is deterministic and local (no network, no model).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

import hitl
from hitl.examples.store import Article, create_app_tables

REVIEW_KEY = "editor-review"

_OPENINGS = [
    "{topic} matters more than most people think.",
    "Few subjects reward a closer look like {topic}.",
    "Here is what a newcomer should know about {topic}.",
]
_MIDDLES = [
    "The basics are simple, but the details decide the outcome.",
    "Three ideas carry most of the weight, and each can be checked.",
    "Practitioners disagree on the edges, yet agree on the core.",
]
_CLOSINGS = [
    "Start small, measure, and adjust.",
    "The best next step is a careful first experiment.",
    "Read further, then try it yourself.",
]


class ReviewRequest(BaseModel):
    """Input of ``content-review``."""

    topic: str = Field(min_length=1, max_length=200)
    max_revisions: int = Field(2, ge=0, le=10, description="Rejections answered by a revision before giving up.")
    review_timeout: str = Field("1h", description="Deadline of each review: seconds or 30s, 15m, 1h, 2d.")
    assignees: list[str] = Field(default_factory=lambda: ["editors"])


class Draft(BaseModel):
    """A draft under review."""

    topic: str
    body: str
    revision: int


def generate(topic: str, revision: int = 0, feedback: str | None = None) -> str:
    """Return a deterministic short article about ``topic`` (same input, same text)."""
    h = hashlib.sha256(f"{topic}|{revision}".encode()).digest()
    parts = [_OPENINGS[h[0] % 3].format(topic=topic), _MIDDLES[h[1] % 3], _CLOSINGS[h[2] % 3]]
    if feedback:
        parts.insert(2, f"(Revision {revision}, addressing the editor: {feedback.strip()})")
    return " ".join(parts)


@hitl.step(name="tasks.content.draft")
def draft(request: dict[str, Any]) -> Draft:
    """Write the first draft of the requested topic."""
    topic = request["topic"]
    return Draft(topic=topic, body=generate(topic), revision=0)


@hitl.step(name="tasks.content.revise")
def revise(previous: dict[str, Any], feedback: str | None) -> Draft:
    """Write the next revision of ``previous``, taking the reviewer's ``feedback`` into account."""
    revision = int(previous["revision"]) + 1
    return Draft(
        topic=previous["topic"], body=generate(previous["topic"], revision, feedback or "no comment"), revision=revision
    )


@hitl.step(name="tasks.content.publish", transactional=True)
def publish(approved: dict[str, Any], approver: str, run_id: str, session: Session) -> dict[str, Any]:
    """Publish the approved draft; the article row commits with the step, so it is written once."""
    create_app_tables()
    article = Article(
        run_id=run_id,
        topic=approved["topic"],
        body=approved["body"],
        revisions=int(approved["revision"]),
        approved_by=approver,
    )
    session.add(article)
    session.flush()
    return {
        "article_id": article.id,
        "topic": article.topic,
        "revisions": article.revisions,
        "approved_by": article.approved_by,
    }


def review(request: dict[str, Any]) -> Any:
    """The wait-and-route tail used for the first review and for each revision."""
    return hitl.wait_for_approval.s(
        key=REVIEW_KEY, timeout=request["review_timeout"], assignees=request["assignees"]
    ) | route_review.s(request=request)


@hitl.step(name="tasks.content.route_review", bind=True)
def route_review(self: hitl.Step, decision: hitl.Decision, request: dict[str, Any]) -> Any:
    """Publish on approval; revise and ask again on rejection while revisions remain; else stop."""
    current = decision.subject
    if decision.outcome is hitl.Outcome.APPROVED:
        return self.replace(publish.si(current, decision.actor))
    if decision.outcome is hitl.Outcome.TIMED_OUT:
        raise hitl.Stop(hitl.RunStatus.TIMED_OUT, current, reason="no editor decided before the deadline")
    if int(current["revision"]) >= request["max_revisions"]:
        raise hitl.Stop(
            hitl.RunStatus.REJECTED,
            current,
            reason=f"rejected after {current['revision']} revision(s): {decision.comment or ''}",
        )
    return self.replace(revise.si(current, decision.comment) | review(request))


@hitl.workflow("content-review", input=ReviewRequest)
def content_review(request: dict[str, Any]) -> Any:
    """Draft an article from a topic, have an editor review it, publish on approval."""
    return draft.s(request) | review(request)
