"""Server-sent event streams: replay from the timeline, then follow the live feed.

Each stream subscribes first (a :class:`~hitl.api.livebus.Feed` of this process's hub), replays the timeline
rows after ``Last-Event-ID`` from the database, then yields live events it has not replayed, so a client
that reconnects misses nothing. With Redis, publishers learn of a new subscriber only within
:data:`~hitl.infra.events.LISTENERS_REFRESH_SECONDS`, so until the hub's ``catch_up_after`` seconds after
subscribing a stream answers a live event by reading the timeline (which also has what a publisher skipped,
in id order), and reads it once more at the end of that window. The generators are async and run on the
server's event loop (database reads go to a worker thread); when idle they yield a comment every few
seconds, which is also when a closed client is noticed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

import anyio.to_thread
from sse_starlette import ServerSentEvent

from approvals.status import EventKind
from hitl.api.livebus import Feed, hub
from hitl.core import views
from hitl.infra.events import INBOX_CHANNEL, INBOX_KINDS, LiveEvent, run_channel

#: Seconds between keep-alive comments on an idle stream.
IDLE_SECONDS = 5.0

Replay = Callable[[int], list[LiveEvent]]


def _sse(ev: LiveEvent) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(ev, separators=(",", ":")), event=ev["kind"], id=str(ev["id"]))


async def _follow(
    feed: Feed,
    replay: Replay,
    last_id: int,
    keep: Callable[[LiveEvent], bool],
    done: Callable[[LiveEvent], bool],
    catch_up_after: float,
) -> AsyncIterator[ServerSentEvent]:
    # Ids above ``last_id`` yielded until the catch-up (a replay may return what also comes live). After it
    # each live event comes once: the set stops growing.
    sent: set[int] = set()
    catch_up_at: float | None = feed.subscribed_at + catch_up_after

    def fresh(events: list[LiveEvent]) -> list[LiveEvent]:
        out: dict[int, LiveEvent] = {}
        for ev in sorted(events, key=lambda ev: ev["id"]):
            if ev["id"] > last_id and ev["id"] not in sent and keep(ev):
                out[ev["id"]] = ev
        if catch_up_at is not None:
            sent.update(out)
        return list(out.values())

    async def next_batch() -> list[LiveEvent] | None:
        """The next events to send, or None when the stream was idle for a while."""
        nonlocal catch_up_at
        wait = IDLE_SECONDS if catch_up_at is None else max(0.0, min(IDLE_SECONDS, catch_up_at - time.monotonic()))
        live = await feed.get(wait)
        if catch_up_at is not None and (live is not None or time.monotonic() >= catch_up_at):
            # Until every publisher surely knows of this stream, a live event only says "read the timeline":
            # it holds every committed event, the live one included, in id order.
            batch = fresh(
                await anyio.to_thread.run_sync(replay, last_id) + ([live] if live is not None else [])
            )  # (noted in ``sent``)
            if time.monotonic() >= catch_up_at:
                catch_up_at = None
            return batch
        return None if live is None else fresh([live])

    try:
        batch: list[LiveEvent] | None = fresh(await anyio.to_thread.run_sync(replay, last_id))
        while True:
            if batch is None:
                yield ServerSentEvent(comment="idle")
            for ev in batch or []:
                yield _sse(ev)
                if done(ev):
                    return
            batch = await next_batch()
    finally:
        feed.close()


async def run_stream(run_id: str, last_id: int) -> AsyncIterator[ServerSentEvent]:
    """Events of run ``run_id`` after ``last_id``; ends after ``run_finished``.

    Subscribes before returning, so that the caller can answer 503 before the response starts.

    Raises:
        BrokerUnavailable: the source of live events cannot be reached.
    """
    bus = hub()
    feed = await bus.subscribe(run_channel(run_id))
    return _follow(
        feed,
        lambda after: views.events_after(run_id, after),
        last_id,
        keep=lambda ev: True,
        done=lambda ev: ev["kind"] == EventKind.FINISHED,
        catch_up_after=bus.catch_up_after,
    )


async def approval_stream(run_id: str, approval_id: str, last_id: int) -> AsyncIterator[ServerSentEvent]:
    """Events of one approval (waiting, refused, resolved) after ``last_id``; ends after ``input_resolved``.

    Raises:
        BrokerUnavailable: the source of live events cannot be reached.
    """

    def mine(ev: LiveEvent) -> bool:
        return ev["detail"].get("approval_id") == approval_id or ev["name"] == approval_id

    bus = hub()
    feed = await bus.subscribe(run_channel(run_id))
    return _follow(
        feed,
        lambda after: views.events_after(run_id, after),
        last_id,
        keep=mine,
        done=lambda ev: ev["kind"] == EventKind.RESOLVED,
        catch_up_after=bus.catch_up_after,
    )


async def inbox_stream(last_id: int) -> AsyncIterator[ServerSentEvent]:
    """Approval lifecycle events of every run; replays only when the client sends ``Last-Event-ID``.

    Raises:
        BrokerUnavailable: the source of live events cannot be reached.
    """
    bus = hub()
    feed = await bus.subscribe(INBOX_CHANNEL)
    # A new client (no Last-Event-ID) starts at the newest event; its catch-up reads from there.
    try:
        start = last_id or await anyio.to_thread.run_sync(views.last_event_id)
    except BaseException:
        feed.close()
        raise
    return _follow(
        feed,
        lambda after: views.events_after(None, after, INBOX_KINDS),
        start,
        keep=lambda ev: True,
        done=lambda ev: False,
        catch_up_after=bus.catch_up_after,
    )
