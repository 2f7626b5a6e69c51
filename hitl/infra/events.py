"""Live lifecycle events: each timeline row is announced to live-event servers once its transaction commits.

The engine does this for every workflow (no workflow code is involved): timeline rows are appended with
:func:`approvals.transitions.add_event` (or ``insert_events``), which note them on the session, and session
hooks announce them. How depends on :func:`mode`, which every process derives from the same settings:

- ``redis`` (``HITL_EVENTS_URL`` is set, or the broker is Redis): after commit, each row is published on
  ``hitl:events:run:<run_id>`` and — for ``waiting_for_input``, ``input_resolved``, ``decision_refused`` and
  ``run_finished`` — also on ``hitl:events:inbox``.
- ``postgresql`` (no Redis, database on PostgreSQL): a transaction that appended rows also sends
  ``NOTIFY hitl_events`` (delivered by PostgreSQL at commit); servers then read the new rows.
- ``database`` (no Redis, another database such as SQLite): nothing is sent; servers read the timeline
  every :data:`POLL_SECONDS`.

The servers' side is :mod:`hitl.api.livebus`. Live events are best effort: the timeline rows are the
durable record, so a subscriber that was away replays them from the database by event id
(``Last-Event-ID``) and then follows live. A publish failure is logged and never fails the transaction
that caused it.

With Redis, only channels somebody listens to are published to. Each process asks Redis which
``hitl:events:*`` channels have subscribers (``PUBSUB CHANNELS``) at most every
:data:`LISTENERS_REFRESH_SECONDS` and skips the rest, so steps nobody watches cost no Redis round trip. A
process may therefore skip a channel for up to that long after someone subscribed to it; a subscriber covers
the gap by reading the timeline again :data:`CATCH_UP_AFTER_SECONDS` after subscribing
(:mod:`hitl.api.streams` does).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import NEW_EVENTS_KEY, RunEvent
from approvals.status import EventKind

if TYPE_CHECKING:
    from hitl.infra.settings import Settings

log = logging.getLogger(__name__)

INBOX_CHANNEL = "hitl:events:inbox"
INBOX_KINDS = frozenset({EventKind.WAITING, EventKind.RESOLVED, EventKind.REFUSED, EventKind.FINISHED})
#: After a failed publish, skip publishing for this long (s) so a broker outage never slows steps down.
PUBLISH_BACKOFF_SECONDS = 1.0
#: How long (s) a process trusts its list of channels with subscribers before asking Redis again.
LISTENERS_REFRESH_SECONDS = 1.0
#: When (s after subscribing) a subscriber reads the timeline again, to get what publishers skipped while
#: their list of channels predated the subscription: the refresh interval plus a margin.
CATCH_UP_AFTER_SECONDS = LISTENERS_REFRESH_SECONDS + 0.5
_CHANNEL_PATTERN = "hitl:events:*"
#: The PostgreSQL notification channel of :func:`mode` ``postgresql``.
PG_CHANNEL = "hitl_events"
#: How often (s) a live-event server reads the timeline when nothing tells it of new rows (``database``
#: mode; in ``postgresql`` mode a fallback should a notification be missed).
POLL_SECONDS = 0.5

Mode = Literal["redis", "postgresql", "database"]


class LiveEvent(TypedDict):
    """One lifecycle event as published and as sent to SSE clients (``at`` is ISO 8601 UTC)."""

    type: Literal["hitl.event"]
    id: int
    run_id: str
    kind: str
    name: str
    task_id: str | None
    detail: dict[str, Any]
    at: str


def run_channel(run_id: str) -> str:
    """The pub/sub channel of one run's events."""
    return f"hitl:events:run:{run_id}"


_COLUMNS = ("id", "run_id", "kind", "name", "task_id", "detail", "at")


def live_event(row: RunEvent | dict[str, Any]) -> LiveEvent:
    """Return a timeline row (a flushed ``RunEvent``, or a mapping returned by a bulk insert) as a
    :class:`LiveEvent`."""
    values: dict[str, Any] = row if isinstance(row, dict) else {c: getattr(row, c) for c in _COLUMNS}
    get = values.__getitem__
    return LiveEvent(
        type="hitl.event",
        id=int(get("id")),
        run_id=str(get("run_id")),
        kind=EventKind(get("kind")).value,
        name=values.get("name") or "",
        task_id=values.get("task_id"),
        detail=values.get("detail") or {},
        at=get("at").isoformat(),
    )


def redis_url(settings: Settings | None = None) -> str | None:
    """Return the Redis URL live events go through: ``HITL_EVENTS_URL``, else the broker's when it is Redis,
    else None (then they go through the database)."""
    from hitl.infra.broker import broker_url
    from hitl.infra.settings import REDIS_SCHEMES, get_settings

    settings = settings or get_settings()
    if settings.events_url:
        return settings.events_url
    url = broker_url(settings)
    return url if url.startswith(REDIS_SCHEMES) else None


def mode(settings: Settings | None = None) -> Mode:
    """Return how live events travel with ``settings`` (see the module docstring)."""
    from hitl.infra.settings import get_settings

    settings = settings or get_settings()
    if redis_url(settings) is not None:
        return "redis"
    return "postgresql" if settings.resolved_database_url.startswith("postgresql") else "database"


def install(factory: sessionmaker[Session]) -> None:
    """Hook ``factory``'s sessions so the timeline rows they commit are announced (see module docstring)."""
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_commit", _after_commit)
    event.listen(factory, "after_rollback", _forget)


def _before_commit(session: Session) -> None:
    # NOTIFY is transactional: PostgreSQL delivers it when (and only if) the rows commit.
    if session.info.get(NEW_EVENTS_KEY) and _mode() == "postgresql":
        session.connection().exec_driver_sql(f"NOTIFY {PG_CHANNEL}")


def _forget(session: Session) -> None:
    session.info.pop(NEW_EVENTS_KEY, None)


def _after_commit(session: Session) -> None:
    pending: list[dict[str, Any]] = session.info.pop(NEW_EVENTS_KEY, [])
    if not pending or _mode() != "redis":
        return
    listened = listened_channels()
    if not listened:
        return
    wanted = [live_event(row) for row in pending if INBOX_CHANNEL in listened or run_channel(row["run_id"]) in listened]
    if wanted:
        publish(sorted(wanted, key=lambda ev: ev["id"]), listened)


_client: redis.Redis | None = None
_client_for: tuple[int, object] = (0, None)
_mode_for: tuple[int, object, Mode] = (0, None, "database")
_down_until = 0.0
_listened: frozenset[str] = frozenset()
_listened_until = 0.0


def _mode() -> Mode:
    """:func:`mode` of this process's settings, kept per process and settings object."""
    global _mode_for
    from hitl.infra.settings import get_settings

    settings = get_settings()
    if _mode_for[0] != os.getpid() or _mode_for[1] is not settings:
        _mode_for = (os.getpid(), settings, mode(settings))
    return _mode_for[2]


def client() -> redis.Redis | None:
    """Return this process's Redis client for live events (:func:`redis_url`), or None without one.

    The client is kept per process and per settings object: a fork, or a process re-pointed at another
    broker (settings reloaded, ``hitl.infra.celery_app.reconfigure``), gets a new one.
    """
    global _client, _client_for, _down_until, _listened_until
    from hitl.infra.settings import get_settings

    settings = get_settings()
    if _client_for[0] != os.getpid() or _client_for[1] is not settings:
        url = redis_url(settings)
        _client = redis_client(url, **_SYNC_OPTIONS) if url else None
        _client_for, _down_until = (os.getpid(), settings), 0.0
        _listened_until = 0.0
    return _client


def listened_channels() -> frozenset[str]:
    """Return the ``hitl:events:*`` channels that had a subscriber at most :data:`LISTENERS_REFRESH_SECONDS`
    ago (empty when the broker is not Redis or did not answer: then nothing is published)."""
    global _listened, _listened_until, _down_until
    r = client()
    now = time.monotonic()
    if r is None or now < _down_until:
        return frozenset()
    if now >= _listened_until:
        # The time is taken before asking: a subscription made after the answer is at most the refresh
        # interval younger than this list's expiry, which is what a subscriber's catch-up relies on.
        _listened_until = now + LISTENERS_REFRESH_SECONDS
        try:
            _listened = frozenset(
                c.decode() if isinstance(c, bytes) else c for c in r.pubsub_channels(_CHANNEL_PATTERN)
            )
        except redis.RedisError as exc:
            _down_until, _listened = now + PUBLISH_BACKOFF_SECONDS, frozenset()
            log.info("could not list live-event subscribers: %s", exc)
    return _listened


# No retries with backoff (redis-py's default retries a refused connection for seconds): live events are
# best effort, and a step's commit must not wait on a server that is down.
_SYNC_OPTIONS: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}


def redis_client(url: str, cls: Any = redis.Redis, **options: Any) -> Any:
    """Return a client of class ``cls`` (``redis.Redis`` or ``redis.asyncio.Redis``) on ``url``, kombu's
    ``redis+socket://PATH`` spelling included."""
    if url.startswith("redis+socket://"):
        return cls(unix_socket_path=url.removeprefix("redis+socket://"), **options)
    return cls.from_url(url, **options)


def publish(events: list[LiveEvent], listened: frozenset[str] | None = None) -> None:
    """Publish ``events`` on their run channels (and the inbox channel) — those of ``listened`` only, if
    given (see :func:`listened_channels`); log and drop on failure."""
    global _down_until
    r = client()
    if r is None or time.monotonic() < _down_until:
        return
    try:
        pipe = r.pipeline(transaction=False)
        for ev in events:
            data = json.dumps(ev, separators=(",", ":"))
            channel = run_channel(ev["run_id"])
            if listened is None or channel in listened:
                pipe.publish(channel, data)
            if ev["kind"] in INBOX_KINDS and (listened is None or INBOX_CHANNEL in listened):
                pipe.publish(INBOX_CHANNEL, data)
        pipe.execute()
    except redis.RedisError as exc:
        _down_until = time.monotonic() + PUBLISH_BACKOFF_SECONDS
        log.info("could not publish %d live event(s): %s", len(events), exc)
