"""The reactor-stall watchdog: reactor_lag_seconds, and a warning that names
what a stalled reactor thread was running."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from supportchat import watchdog as watchdog_module
from supportchat.metrics import Metrics
from supportchat.watchdog import ReactorWatchdog


class WatchdogClockTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.events: list[dict[str, Any]] = []
        self.patch(watchdog_module, "log", Logger(observer=self.events.append))
        self.dog = ReactorWatchdog(self.clock, self.metrics.reactor_lag.observe, threshold=0.1, interval=0.05,
                                   log_every=30.0, sample=False)
        self.dog.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.dog.running:
            self.dog.stopService()

    def lag(self, suffix: str) -> float:
        return self.metrics.registry.get_sample_value(f"reactor_lag_seconds_{suffix}") or 0.0

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def stall(self, seconds: float) -> None:
        """The reactor is busy for ``seconds`` past the timer's due time
        (the clock moves without running anything), then runs the timer."""
        self.clock.advance(self.dog.interval)  # the timer fires on time once, then is due again
        self.clock.rightNow += self.dog.interval + seconds
        self.clock.advance(0)

    def test_lag_is_how_late_the_timer_fired(self) -> None:
        """An on-time tick records a lag of 0; a tick run 0.25 s after it was
        due records 0.25 s, in the reactor_lag_seconds histogram."""
        self.clock.advance(0.05)
        self.assertEqual(self.lag("count"), 1)
        self.assertEqual(self.lag("sum"), 0)
        self.clock.rightNow += 0.3  # due at 0.1, run at 0.35
        self.clock.advance(0)
        self.assertEqual(self.lag("count"), 2)
        self.assertAlmostEqual(self.lag("sum"), 0.25)
        self.assertEqual(self.metrics.registry.get_sample_value("reactor_lag_seconds_bucket", {"le": "0.1"}), 1)
        self.assertEqual(self.metrics.registry.get_sample_value("reactor_lag_seconds_bucket", {"le": "0.25"}), 2)

    def test_a_stall_over_the_threshold_logs_what_ran(self) -> None:
        """A lag of at least the threshold logs one warning with the lag and
        the stack the sampler took of the reactor thread while it was stalled."""
        self.clock.advance(0.05)
        self.clock.rightNow += 0.2  # overdue by 0.15 s: a stall in progress
        self.assertTrue(self.dog.check())
        self.assertFalse(self.dog.check(), "one stack per late tick")
        self.clock.advance(0)
        [line] = self.warnings()
        self.assertIn("at least 150 ms", line)
        self.assertIn("stall_warning 100 ms", line)
        # The sampler looked at this (the test's) thread: the innermost frames name this method.
        self.assertIn("test_watchdog.py:test_a_stall_over_the_threshold_logs_what_ran:", line)
        self.assertEqual(self.events[0]["log_level"].name, "warn")

    def test_a_stall_not_sampled_says_so(self) -> None:
        """Without a stack (the stall ended before the sampler looked) the
        warning says it was not sampled, rather than naming something else."""
        self.stall(0.2)
        [line] = self.warnings()
        self.assertIn("not sampled", line)

    def test_short_lags_and_a_sampler_before_the_threshold_log_nothing(self) -> None:
        """A lag under the threshold is measured but not logged, and the
        sampler takes no stack before the timer is overdue by the threshold."""
        self.clock.advance(0.05)
        self.clock.rightNow += 0.1  # overdue by 0.05 s only
        self.assertFalse(self.dog.check())
        self.clock.advance(0)
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.lag("count"), 2)

    def test_warnings_are_rate_limited(self) -> None:
        """Stalls within log_every of a warning are counted, not logged; the
        next warning after it says how many were held back."""
        self.stall(0.2)
        self.stall(0.3)
        self.stall(0.2)
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(self.dog.stalls, 3)
        self.clock.advance(31)
        self.stall(0.2)
        lines = self.warnings()
        self.assertEqual(len(lines), 2)
        self.assertIn("2 more stall(s) not logged", lines[1])

    def test_threshold_zero_turns_the_log_off(self) -> None:
        """With stall_warning = 0 the histogram still fills and nothing is logged."""
        self.dog.threshold = 0
        self.stall(0.5)
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.lag("count"), 2)

    def test_stop_leaves_no_timer_behind(self) -> None:
        """After stopService nothing is scheduled on the reactor, and the
        timer is scheduled again by a restart."""
        self.clock.advance(0.2)
        self.dog.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.dog.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


def _block_the_reactor(sampled: threading.Event) -> None:
    """What a bad callback looks like: it holds the reactor thread, here
    until the watchdog's sampler has seen it stalled (bounded)."""
    sampled.wait(5.0)


class WatchdogRealReactorTests(unittest.TestCase):
    @inlineCallbacks
    def test_warning_names_the_function_that_blocked_the_reactor(self) -> Any:
        """On the real reactor, with the sampling thread, a callback that
        holds the reactor past the threshold is logged as a stall naming
        that function, and the stall is in the lag histogram."""
        from twisted.internet import reactor

        warned: Deferred[str] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            if not warned.called:
                warned.callback(formatEvent(event))

        self.patch(watchdog_module, "log", Logger(observer=observe))
        metrics = Metrics()
        dog = ReactorWatchdog(reactor, metrics.reactor_lag.observe, threshold=0.1, interval=0.05)
        sampled = threading.Event()
        check = dog.check

        def checked() -> bool:
            took = check()
            if took:
                sampled.set()  # the stall has been seen: the blocker may let go
            return took

        dog.check = checked  # type: ignore[method-assign]
        dog.startService()
        self.addCleanup(lambda: dog.stopService() if dog.running else None)
        blocker = reactor.callLater(0.06, _block_the_reactor, sampled)
        self.addCleanup(lambda: blocker.cancel() if blocker.active() else None)
        line = yield warned.addTimeout(5, reactor)
        self.assertIn("reactor stalled", line)
        self.assertIn("test_watchdog.py:_block_the_reactor:", line)
        dog.stopService()
        self.assertGreaterEqual(metrics.registry.get_sample_value("reactor_lag_seconds_count") or 0, 1)
        self.assertGreaterEqual(
            metrics.registry.get_sample_value("reactor_lag_seconds_sum") or 0, 0.1, "the stall is in the lag"
        )
