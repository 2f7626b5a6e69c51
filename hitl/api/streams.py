"""Server-sent event streams: replay from the timeline, then follow the live channel.

Each stream subscribes first, replays the timeline rows after ``Last-Event-ID`` from the database, then
yields live events it has not replayed, so a client that reconnects misses nothing. Publishers learn of a
new subscriber only within :data:`~hitl.events.LISTENERS_REFRESH_SECONDS`, so until
:data:`~hitl.events.CATCH_UP_AFTER_SECONDS` after subscribing a stream answers a live event by reading the
timeline (which also has what a publisher skipped, in id order), and reads it once more at the end of that
window. The generators are sync (they run in a worker thread); when idle they yield a comment every few
seconds, which is also when a closed client is noticed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from sse_starlette import ServerSentEvent

from approvals.status import EventKind
from hitl import views
from hitl.events import CATCH_UP_AFTER_SECONDS, INBOX_CHANNEL, INBOX_KINDS, LiveEvent, Subscription, run_channel

#: Seconds between keep-alive comments on an idle stream.
IDLE_SECONDS = 5.0


def _sse(ev: LiveEvent) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(ev, separators=(",", ":")), event=ev["kind"], id=str(ev["id"]))


def _stream(
    channel: str,
    replay: Callable[[int], list[LiveEvent]],
    last_id: int,
    keep: Callable[[LiveEvent], bool],
    done: Callable[[LiveEvent], bool],
) -> Iterator[ServerSentEvent]:
    sub = Subscription(channel)  # raises BrokerUnavailable now, before the response starts
    return _follow(sub, replay, last_id, keep, done)


def _follow(
    sub: Subscription,
    replay: Callable[[int], list[LiveEvent]],
    last_id: int,
    keep: Callable[[LiveEvent], bool],
    done: Callable[[LiveEvent], bool],
) -> Iterator[ServerSentEvent]:
    # Ids above ``last_id`` yielded until the catch-up (a replay may return what already came live). After it
    # only pub/sub delivers, each message once: the set stops growing.
    sent: set[int] = set()
    catch_up_at: float | None = sub.subscribed_at + CATCH_UP_AFTER_SECONDS

    def fresh(events: list[LiveEvent]) -> list[LiveEvent]:
        out: dict[int, LiveEvent] = {}
        for ev in sorted(events, key=lambda ev: ev["id"]):
            if ev["id"] > last_id and ev["id"] not in sent and keep(ev):
                out[ev["id"]] = ev
        if catch_up_at is not None:
            sent.update(out)
        return list(out.values())

    def next_batch() -> list[LiveEvent] | None:
        """The next events to send, or None when the stream was idle for a while."""
        nonlocal catch_up_at
        wait = IDLE_SECONDS if catch_up_at is None else max(0.0, min(IDLE_SECONDS, catch_up_at - time.monotonic()))
        live = sub.get(wait)
        if catch_up_at is not None and (live is not None or time.monotonic() >= catch_up_at):
            # Until every publisher surely knows of this stream, a live event only says "read the timeline":
            # it holds every committed event, the live one included, in id order.
            batch = fresh(replay(last_id) + ([live] if live is not None else []))  # (noted in ``sent``)
            if time.monotonic() >= catch_up_at:
                catch_up_at = None
            return batch
        return None if live is None else fresh([live])

    try:
        batch: list[LiveEvent] | None = fresh(replay(last_id))
        while True:
            if batch is None:
                yield ServerSentEvent(comment="idle")
            for ev in batch or []:
                yield _sse(ev)
                if done(ev):
                    return
            batch = next_batch()
    finally:
        sub.close()


def run_stream(run_id: str, last_id: int) -> Iterator[ServerSentEvent]:
    """Events of run ``run_id`` after ``last_id``; ends after ``run_finished``."""
    return _stream(
        run_channel(run_id),
        lambda after: views.events_after(run_id, after),
        last_id,
        keep=lambda ev: True,
        done=lambda ev: ev["kind"] == EventKind.FINISHED,
    )


def approval_stream(run_id: str, approval_id: str, last_id: int) -> Iterator[ServerSentEvent]:
    """Events of one approval (waiting, refused, resolved) after ``last_id``; ends after ``input_resolved``."""

    def mine(ev: LiveEvent) -> bool:
        return ev["detail"].get("approval_id") == approval_id or ev["name"] == approval_id

    return _stream(
        run_channel(run_id),
        lambda after: views.events_after(run_id, after),
        last_id,
        keep=mine,
        done=lambda ev: ev["kind"] == EventKind.RESOLVED,
    )


def inbox_stream(last_id: int) -> Iterator[ServerSentEvent]:
    """Approval lifecycle events of every run; replays only when the client sends ``Last-Event-ID``."""
    sub = Subscription(INBOX_CHANNEL)
    # A new client (no Last-Event-ID) starts at the newest event; its catch-up reads from there.
    return _follow(
        sub,
        lambda after: views.events_after(None, after, INBOX_KINDS),
        last_id or views.last_event_id(),
        keep=lambda ev: True,
        done=lambda ev: False,
    )
