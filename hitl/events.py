"""Live lifecycle events: each timeline row is published on Redis pub/sub once its transaction commits.

The engine does this for every workflow (no workflow code is involved): timeline rows are appended with
:func:`approvals.transitions.add_event` (or ``insert_events``), which note them on the session, and a
session hook publishes them after commit, on
``hitl:events:run:<run_id>`` and — for ``waiting_for_input``, ``input_resolved``, ``decision_refused`` and
``run_finished`` — also on ``hitl:events:inbox``. Pub/sub is best effort: the timeline rows are the durable
record, so a subscriber that was away replays them from the database by event id (``Last-Event-ID``) and
then follows the live channel. A publish failure is logged and never fails the transaction that caused it.

Only channels somebody listens to are published to. Each process asks Redis which ``hitl:events:*``
channels have subscribers (``PUBSUB CHANNELS``) at most every :data:`LISTENERS_REFRESH_SECONDS` and skips
the rest, so steps nobody watches cost no Redis round trip. A process may therefore skip a channel for up
to that long after someone subscribed to it; a subscriber covers the gap by reading the timeline again
:data:`CATCH_UP_AFTER_SECONDS` after subscribing (:mod:`hitl.api.streams` does).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Literal, TypedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import NEW_EVENTS_KEY, RunEvent
from approvals.status import EventKind

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


def install(factory: sessionmaker[Session]) -> None:
    """Hook ``factory``'s sessions so the timeline rows they commit are published (see module docstring)."""
    event.listen(factory, "after_commit", _after_commit)
    event.listen(factory, "after_rollback", _forget)


def _forget(session: Session) -> None:
    session.info.pop(NEW_EVENTS_KEY, None)


def _after_commit(session: Session) -> None:
    pending: list[dict[str, Any]] = session.info.pop(NEW_EVENTS_KEY, [])
    if not pending:
        return
    listened = listened_channels()
    if not listened:
        return
    wanted = [live_event(row) for row in pending if INBOX_CHANNEL in listened or run_channel(row["run_id"]) in listened]
    if wanted:
        publish(sorted(wanted, key=lambda ev: ev["id"]), listened)


_client: redis.Redis | None = None
_client_for: tuple[int, object] = (0, None)
_down_until = 0.0
_listened: frozenset[str] = frozenset()
_listened_until = 0.0


def client() -> redis.Redis | None:
    """Return this process's Redis client on the broker, or None when the broker is not Redis.

    The client is kept per process and per settings object: a fork, or a process re-pointed at another
    broker (settings reloaded, ``hitl.app.reconfigure``), gets a new one.
    """
    global _client, _client_for, _down_until, _listened_until
    from hitl.broker import broker_url
    from hitl.settings import get_settings

    settings = get_settings()
    if _client_for[0] != os.getpid() or _client_for[1] is not settings:
        _client, _client_for, _down_until = _redis_for(broker_url(settings)), (os.getpid(), settings), 0.0
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


def _redis_for(url: str) -> redis.Redis | None:
    # No retries with backoff (redis-py's default retries a refused connection for seconds): live events are
    # best effort, and a step's commit must not wait on a broker that is down.
    opts: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), **opts)
    if url.startswith(("redis://", "rediss://")):
        return redis.Redis.from_url(url, **opts)
    log.warning("live events need a Redis broker; %s is not one, so no live events are published", url.split(":")[0])
    return None


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


class Subscription:
    """A live subscription to one channel (:func:`run_channel` or :data:`INBOX_CHANNEL`); close it when done.

    Subscribe before replaying missed events from the database, then skip live events already replayed
    (by id): nothing falls in the gap between the two.

    Raises:
        BrokerUnavailable: the broker is not Redis or cannot be reached (from the constructor and :meth:`get`).
    """

    def __init__(self, channel: str) -> None:
        from approvals.errors import BrokerUnavailable

        r = client()
        if r is None:
            raise BrokerUnavailable("live events need a Redis broker")
        self._pubsub = r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            self._pubsub.subscribe(channel)
            # Wait for the server's confirmation: from then on the channel is listed as listened.
            self._pubsub.get_message(timeout=2.0)
        except redis.RedisError as exc:
            self._pubsub.close()
            raise BrokerUnavailable(f"cannot subscribe to live events: {exc}") from exc
        #: ``time.monotonic()`` once subscribed; the timeline is read again at ``+ CATCH_UP_AFTER_SECONDS``.
        self.subscribed_at = time.monotonic()

    def get(self, timeout: float) -> LiveEvent | None:
        """Return the next event, or None if none came within ``timeout`` seconds."""
        from approvals.errors import BrokerUnavailable

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._pubsub.get_message(timeout=left)
            except redis.RedisError as exc:
                raise BrokerUnavailable(f"live events interrupted: {exc}") from exc
            if message is not None and message["type"] == "message":
                event: LiveEvent = json.loads(message["data"])
                return event
        return None

    def close(self) -> None:
        """Unsubscribe and release the connection."""
        self._pubsub.close()
