"""Server-sent event streams: replay from the timeline, then follow the live channel.

Each stream subscribes first, replays the timeline rows after ``Last-Event-ID`` from the database, then
yields live events it has not replayed, so a client that reconnects misses nothing. The generators are
sync (they run in a worker thread); when idle they yield a comment every few seconds, which is also when
a closed client is noticed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from sse_starlette import ServerSentEvent

from approvals.status import EventKind
from hitl import views
from hitl.events import INBOX_CHANNEL, INBOX_KINDS, LiveEvent, Subscription, run_channel

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
    try:
        for ev in replay(last_id):
            last_id = ev["id"]
            if keep(ev):
                yield _sse(ev)
                if done(ev):
                    return
        while True:
            live = sub.get(IDLE_SECONDS)
            if live is None:
                yield ServerSentEvent(comment="idle")
            elif live["id"] > last_id and keep(live):
                last_id = live["id"]
                yield _sse(live)
                if done(live):
                    return
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
    return _stream(
        INBOX_CHANNEL,
        lambda after: views.events_after(None, after, INBOX_KINDS) if after else [],
        last_id,
        keep=lambda ev: True,
        done=lambda ev: False,
    )
