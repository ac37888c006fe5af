"""The skeleton of a service that works in rounds on the injected clock
(the webhook and email dispatchers): a round at start and then every
``poll_interval`` seconds after the last one ended, ``poke()`` to bring the
next one forward, rounds run through the one background helper (failures
logged), stop cancels the timer and waits for the rounds in flight; and the
retry back-off both use."""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from supportchat.background import BackgroundTasks


class PolledService(Service):
    """Subclasses implement ``round()`` (a coroutine) and may override
    ``next_delay()``."""

    name_of_round = "round"

    def __init__(self, clock: IReactorTime, background: BackgroundTasks, poll_interval: float,
                 retry_min_delay: float, retry_max_delay: float, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._background = background
        self._poll = poll_interval
        self._min = retry_min_delay
        self._max = retry_max_delay
        self._rng = rng or random.Random()
        self._call: IDelayedCall | None = None
        self._inflight: set[Deferred[Any]] = set()

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> "Deferred[Any]":
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return DeferredList(list(self._inflight), consumeErrors=True)

    def poke(self) -> None:
        """Run a round now instead of at the next tick."""
        if self.running and self._call is not None and self._call.active():
            self._call.reset(0)

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1, 2, ...):
        retry_min_delay doubled each time up to retry_max_delay, then a
        random half to whole of it (jitter)."""
        base = min(self._max, self._min * 2.0 ** min(max(attempt, 1) - 1, 40))
        return base / 2 + self._rng.random() * base / 2

    async def round(self) -> None:
        raise NotImplementedError

    def next_delay(self) -> float:
        """How long after a round ends the next one starts."""
        return self._poll

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self._tick)

    def _track(self, d: "Deferred[Any]") -> None:
        self._inflight.add(d)

        def done(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        d.addBoth(done)

    def _started_round(self) -> None:
        """Called as a tick starts a round (before ``round()``)."""

    def _tick(self) -> None:
        self._call = None
        self._started_round()
        d = self._background.run(self.name_of_round, lambda: Deferred.fromCoroutine(self.round()))
        self._track(d)
        d.addBoth(lambda _: self._schedule(self.next_delay()))


__all__ = ["PolledService"]
