"""The SSE follow loop: a stream misses nothing a publisher skipped before it knew of the subscriber."""

from __future__ import annotations

import asyncio
import time

from hitl.api import streams
from hitl.infra.events import CATCH_UP_AFTER_SECONDS, LiveEvent


def _ev(i: int, kind: str) -> LiveEvent:
    return LiveEvent(type="hitl.event", id=i, run_id="r", kind=kind, name="", task_id=None, detail={}, at="")


class _Sub:
    """Live events as a subscription would deliver them (a list; then nothing)."""

    def __init__(self, live: list[LiveEvent]) -> None:
        self.live = list(live)
        self.subscribed_at = time.monotonic()
        self.closed = False

    async def get(self, timeout: float) -> LiveEvent | None:
        if self.live:
            return self.live.pop(0)
        await asyncio.sleep(min(timeout, 0.01))
        return None

    def close(self) -> None:
        self.closed = True


def _ids(
    sub: _Sub, timeline: list[LiveEvent], last_id: int = 0, catch_up_after: float = CATCH_UP_AFTER_SECONDS
) -> list[int]:
    def replay(after: int) -> list[LiveEvent]:
        return [ev for ev in timeline if ev["id"] > after]

    async def collect(catch_up_after: float) -> list[int]:
        follow = streams._follow(
            sub,  # type: ignore[arg-type]
            replay,
            last_id,
            keep=lambda ev: True,
            done=lambda ev: ev["kind"] == "run_finished",
            catch_up_after=catch_up_after,
        )
        return [int(e.id) async for e in follow if e.id is not None]

    return asyncio.run(collect(catch_up_after))


def test_a_run_stream_ending_early_still_sends_what_a_publisher_skipped() -> None:
    # Replayed at subscribe: 1, 2. Then 3 (input_resolved) is committed by a process that did not yet know of
    # the subscriber (not published); 4 and 5 come live. The stream ends on 5 with 3 included, in id order.
    timeline = [_ev(1, "created"), _ev(2, "waiting_for_input")]
    sub = _Sub([_ev(4, "step_finished"), _ev(5, "run_finished")])
    timeline += [_ev(3, "input_resolved"), _ev(4, "step_finished"), _ev(5, "run_finished")]
    assert _ids(sub, timeline) == [1, 2, 3, 4, 5]
    assert sub.closed


def test_live_events_already_replayed_are_not_sent_twice() -> None:
    timeline = [_ev(1, "created"), _ev(2, "step_finished"), _ev(3, "run_finished")]
    sub = _Sub([_ev(2, "step_finished"), _ev(3, "run_finished")])
    assert _ids(sub, timeline, last_id=1) == [2, 3]


def test_after_the_window_live_events_are_sent_as_they_come() -> None:
    timeline = [_ev(1, "created")]
    sub = _Sub([_ev(2, "step_finished"), _ev(3, "run_finished")])
    # The window is over at once: one catch-up read (nothing new), then the live events themselves.
    assert _ids(sub, timeline, catch_up_after=0.0) == [1, 2, 3]
