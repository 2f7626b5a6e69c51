"""One live-event subscriber per server process, fanning out to the streams it serves.

A :class:`Hub` holds what every open SSE stream of this process listens to, each stream as a :class:`Feed`
(a bounded asyncio queue). It runs on the server's event loop, so an open stream costs a queue and a few
kilobytes, not a thread. How events reach the hub depends on :func:`hitl.infra.events.mode`:

- :class:`RedisHub`: one async Redis pub/sub connection, subscribed to the channels local streams listen to
  (a channel is subscribed when its first stream opens, unsubscribed when its last one closes).
- :class:`DatabaseHub`: one task reads the timeline after the newest id it has seen, whenever PostgreSQL
  notifies ``hitl_events`` (``LISTEN`` on one psycopg async connection), else every
  :data:`~hitl.infra.events.POLL_SECONDS`; each row goes to the feeds of its run (and the inbox's, for its
  kinds). A read happens only while some stream is open.

If the hub loses its source (Redis down, a failed read), every feed ends with :class:`BrokerUnavailable`:
the streams close and clients reconnect with ``Last-Event-ID``, replaying from the timeline. A feed whose
client reads slower than events come ends the same way once :data:`FEED_SIZE` events wait in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

import anyio.to_thread

from approvals.errors import BrokerUnavailable
from hitl.infra import events
from hitl.infra.events import INBOX_CHANNEL, INBOX_KINDS, LiveEvent, run_channel

log = logging.getLogger(__name__)

#: Events a feed holds for a client that reads slowly; beyond it the stream ends (the client catches up
#: from the timeline on reconnecting).
FEED_SIZE = 1000
#: Seconds a Redis subscription may take to be confirmed.
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
#: Timeline rows of PostgreSQL are read again for this long (s) after they are first seen: ids come from a
#: sequence when rows are inserted, so a transaction committing after a later one shows a lower id late.
#: (SQLite's writers take the database lock in turn, so there ids commit in order.)
SETTLE_SECONDS = 2.0
#: Rows read per query of the timeline.
PAGE = 1000


class Feed:
    """What one stream receives: the events of one channel, from the moment it subscribed."""

    def __init__(self, hub: Hub, channel: str) -> None:
        self.hub, self.channel = hub, channel
        self._queue: asyncio.Queue[LiveEvent | BrokerUnavailable] = asyncio.Queue(FEED_SIZE + 1)
        #: ``time.monotonic()`` when the hub was surely subscribed for this feed.
        self.subscribed_at = time.monotonic()
        self.closed = False

    def put(self, item: LiveEvent | BrokerUnavailable) -> None:
        """Queue ``item`` for the stream (non-blocking); a full feed is ended instead."""
        if self.closed:
            return
        if self._queue.qsize() >= FEED_SIZE and not isinstance(item, BrokerUnavailable):
            item = BrokerUnavailable(f"the client read too slowly ({FEED_SIZE} live events waiting); reconnect")
        if isinstance(item, BrokerUnavailable):
            self.hub.discard(self)
        self._queue.put_nowait(item)

    async def get(self, timeout: float) -> LiveEvent | None:
        """Return the next event, or None if none came within ``timeout`` seconds.

        Raises:
            BrokerUnavailable: the hub lost its source of events, or the feed overflowed.
        """
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout) if timeout > 0 else self._queue.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        if isinstance(item, BrokerUnavailable):
            raise item
        return item

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        if not self.closed:
            self.hub.discard(self)
            self.closed = True


class Hub:
    """The feeds of one process by channel; subclasses bring the events in."""

    #: How long (s) after subscribing a stream treats live events as "read the timeline" (see
    #: :mod:`hitl.api.streams`): publishers may skip a channel that new for a while.
    catch_up_after: float = 0.0

    def __init__(self) -> None:
        self.feeds: dict[str, set[Feed]] = {}

    async def subscribe(self, channel: str) -> Feed:
        """Return a feed of ``channel`` that gets every event announced from now on.

        Raises:
            BrokerUnavailable: the source of live events cannot be reached.
        """
        feed = Feed(self, channel)
        first = channel not in self.feeds
        self.feeds.setdefault(channel, set()).add(feed)
        try:
            await self._listen(channel, first)
        except BaseException:
            feed.close()
            raise
        feed.subscribed_at = time.monotonic()
        return feed

    async def _listen(self, channel: str, first: bool) -> None:
        """Make sure events of ``channel`` come in from now on."""

    def discard(self, feed: Feed) -> None:
        """Forget ``feed`` (its stream ended)."""
        feeds = self.feeds.get(feed.channel)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self.feeds[feed.channel]
                self._unlisten(feed.channel)

    def _unlisten(self, channel: str) -> None:
        """No feed listens to ``channel`` any more."""

    def dispatch(self, channel: str, event: LiveEvent) -> None:
        """Give ``event`` to every feed of ``channel``."""
        for feed in list(self.feeds.get(channel, ())):
            feed.put(event)

    def fail(self, error: BrokerUnavailable) -> None:
        """End every feed with ``error``."""
        for feeds in list(self.feeds.values()):
            for feed in list(feeds):
                feed.put(error)

    async def close(self) -> None:
        """Stop the hub's tasks and connections (server shutdown)."""


class RedisHub(Hub):
    """Events from Redis pub/sub, as :mod:`hitl.infra.events` publishes them."""

    catch_up_after = events.CATCH_UP_AFTER_SECONDS

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._redis: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    async def _listen(self, channel: str, first: bool) -> None:
        import redis

        try:
            async with self._lock:
                if self._pubsub is None:
                    self._connect()
                if first or channel not in self._confirmed:
                    self._confirmed[channel] = asyncio.Event()
                    await self._pubsub.subscribe(channel)
                confirmed = self._confirmed[channel]
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(), name="hitl-live-events")
            # Confirmed by the server: from then on publishers see the channel as listened (PUBSUB CHANNELS).
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_SECONDS)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            await self._reset(BrokerUnavailable(f"cannot subscribe to live events: {exc or type(exc).__name__}"))
            raise BrokerUnavailable(f"cannot subscribe to live events: {exc or type(exc).__name__}") from exc

    def _connect(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No silent reconnects: messages published while reconnecting would be lost without the streams
        # knowing; on an error every stream ends instead and its client replays from the timeline.
        self._redis = events.redis_client(
            self.url,
            redis.asyncio.Redis,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=15,
        )
        self._pubsub = self._redis.pubsub()

    def _unlisten(self, channel: str) -> None:
        self._confirmed.pop(channel, None)
        if self._pubsub is not None:
            asyncio.get_running_loop().create_task(self._unsubscribe(channel))

    async def _unsubscribe(self, channel: str) -> None:
        import redis

        async with self._lock:
            if channel in self.feeds or self._pubsub is None:
                return  # a new stream took the channel meanwhile
            try:
                await self._pubsub.unsubscribe(channel)
            except (redis.RedisError, OSError) as exc:
                await self._reset(BrokerUnavailable(f"live events interrupted: {exc}"))

    async def _read(self) -> None:
        import redis

        try:
            while self._pubsub is not None:
                message = await self._pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                if message["type"] == "subscribe":
                    if (confirmed := self._confirmed.get(channel)) is not None:
                        confirmed.set()
                elif message["type"] == "message":
                    self.dispatch(channel, json.loads(message["data"]))
        except (redis.RedisError, OSError) as exc:
            log.warning("live events interrupted: %s", exc)
            await self._reset(BrokerUnavailable(f"live events interrupted: {exc}"))

    async def _reset(self, error: BrokerUnavailable) -> None:
        """Drop the connection and end every feed; the next stream connects again."""
        pubsub, client = self._pubsub, self._redis
        self._pubsub = self._redis = None
        self._confirmed.clear()
        self.fail(error)
        for closing in (pubsub, client):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing.aclose()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self._reset(BrokerUnavailable("the server is shutting down"))


class DatabaseHub(Hub):
    """Events read from the timeline: woken by PostgreSQL ``NOTIFY`` when ``listen_url`` is given, else polled."""

    def __init__(self, listen_url: str | None, settle: float) -> None:
        super().__init__()
        self.listen_url = listen_url
        self.settle = settle
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        #: Rows above this id are read at each pass; ``_seen`` holds those already dispatched.
        self._floor = 0
        self._seen: dict[int, float] = {}
        self._lock = asyncio.Lock()

    async def _listen(self, channel: str, first: bool) -> None:
        async with self._lock:
            if self._task is None or self._task.done():
                await self._start()

    async def _start(self) -> None:
        from hitl.core import views

        try:
            # Rows up to here are the new stream's replay; the hub dispatches what comes after.
            self._floor, self._seen = await anyio.to_thread.run_sync(views.last_event_id), {}
        except Exception as exc:
            raise BrokerUnavailable(f"cannot read live events from the database: {exc}") from exc
        if self.listen_url is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._notifications(), name="hitl-live-events-listen")
        self._task = asyncio.create_task(self._poll(), name="hitl-live-events")

    async def _poll(self) -> None:
        from hitl.core import views

        while self.feeds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), events.POLL_SECONDS)
            self._wake.clear()
            try:
                rows = await anyio.to_thread.run_sync(self._read_new, views.events_after)
            except Exception as exc:
                log.warning("could not read live events from the database: %s", exc)
                self.fail(BrokerUnavailable(f"live events interrupted: {exc}"))
                break
            for ev in rows:
                self.dispatch(run_channel(ev["run_id"]), ev)
                if ev["kind"] in INBOX_KINDS:
                    self.dispatch(INBOX_CHANNEL, ev)
        self._task = None

    def _read_new(self, events_after: Any) -> list[LiveEvent]:
        """Rows above the floor not dispatched yet (in a worker thread); moves the floor on."""
        new: list[LiveEvent] = []
        after = self._floor
        while True:
            page: list[LiveEvent] = events_after(None, after)
            new += [ev for ev in page if ev["id"] not in self._seen]
            if len(page) < PAGE:
                break
            after = page[-1]["id"]
        now = time.monotonic()
        for ev in new:
            self._seen[ev["id"]] = now
        # The floor moves up to the rows seen at least ``settle`` ago: a lower id committed later than that
        # is not seen live (its stream gets it on reconnecting, from the timeline).
        settled = [i for i, at in self._seen.items() if now - at >= self.settle]
        if settled:
            self._floor = max(self._floor, *settled)
            self._seen = {i: at for i, at in self._seen.items() if i > self._floor}
        return new

    async def _notifications(self) -> None:
        assert self.listen_url is not None
        try:
            import psycopg
        except ImportError:  # pragma: no cover - the postgres extra installs it
            log.warning("psycopg is not installed: live events poll the database every %ss", events.POLL_SECONDS)
            return
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.listen_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {events.PG_CHANNEL}")
                    self._wake.set()  # anything committed before LISTEN is read now
                    async for _ in conn.notifies():
                        self._wake.set()
            except psycopg.Error as exc:
                log.warning("LISTEN %s failed (%s); polling the timeline meanwhile", events.PG_CHANNEL, exc)
                await asyncio.sleep(events.POLL_SECONDS * 4)

    async def close(self) -> None:
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.fail(BrokerUnavailable("the server is shutting down"))


_hub: tuple[int, asyncio.AbstractEventLoop | None, Hub | None] = (0, None, None)


def hub() -> Hub:
    """Return this process's hub (one per process and event loop), made for the settings in force."""
    global _hub
    loop = asyncio.get_running_loop()
    current = _hub[2]
    if _hub[0] != os.getpid() or _hub[1] is not loop or current is None:
        current = _make()
        _hub = (os.getpid(), loop, current)
    return current


def _make() -> Hub:
    from hitl.infra.settings import get_settings

    settings = get_settings()
    mode = events.mode(settings)
    if mode == "redis":
        url = events.redis_url(settings)
        assert url is not None
        return RedisHub(url)
    if mode == "postgresql":
        return DatabaseHub(_libpq_url(settings.resolved_database_url), SETTLE_SECONDS)
    return DatabaseHub(None, 0.0 if settings.resolved_database_url.startswith("sqlite") else SETTLE_SECONDS)


def _libpq_url(url: str) -> str:
    """``url`` (SQLAlchemy's, e.g. ``postgresql+psycopg://...``) as libpq takes it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def shutdown() -> None:
    """Close this process's hub, if it has one (the server's lifespan calls this)."""
    global _hub
    hub_ = _hub[2]
    _hub = (0, None, None)
    if hub_ is not None:
        await hub_.close()
