"""The reactor-stall watchdog: how late the reactor gets to its timers, and
what it was doing when it got to one too late.

A timer on the injected reactor fires every ``interval`` seconds; each time
it records how late it fired (``reactor_lag_seconds``): the time the
reactor thread spent on something else when the timer was due, so a lag of
L means some reactor turn ran for at least L. A lag of ``threshold`` or
more logs a warning naming what the reactor thread was running.

The evidence comes from a sampling thread: while the timer is overdue by
``threshold`` or more (a stall in progress), it takes the reactor thread's
current stack (``sys._current_frames()``), once per late tick, and the
warning names the innermost frames (``file:function:line``; no arguments,
no locals, so no message bodies or tokens). The thread only reads a float
and a counter when nothing is late; the warning is rate limited to one
every ``log_every`` seconds (the lines held back are counted in the next).

Limits: a turn shorter than ``threshold + interval`` may be seen only in
part (the timer fell due in its middle); the sampler looks every
``threshold / 2`` seconds, so a stall that ends before it looks is logged
without a stack ("not sampled"). The lag is
measured with the reactor's own clock (what its timers use).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger()

INTERVAL = 0.05  # seconds between the watchdog's timer calls
LOG_EVERY = 30.0  # at most one stall warning per this many seconds
FRAMES = 6  # innermost frames named in a warning
_HERE = os.path.abspath(__file__)


def _short(filename: str) -> str:
    """A frame's file, from its package on (site-packages/..., supportchat/...)."""
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        at = filename.rfind(marker)
        if at >= 0:
            return filename[at + len(marker):]
    parts = filename.split(os.sep)
    return os.sep.join(parts[-2:])


def describe_stack(frame: Any, limit: int = FRAMES) -> str:
    """The innermost ``limit`` frames of ``frame``'s stack, innermost first,
    as ``file:function:line`` joined by `` < ``."""
    summary = traceback.extract_stack(frame, limit=limit)
    return " < ".join(f"{_short(f.filename)}:{f.name}:{f.lineno}" for f in reversed(summary))


class ReactorWatchdog(Service):
    """Measures reactor lag on ``clock`` into ``histogram`` and logs stalls
    of ``threshold`` seconds or more (0: never logs; the histogram still
    fills). ``sample`` runs the sampling thread (off in unit tests, which
    call :meth:`check` themselves)."""

    def __init__(
        self, clock: Any, observe: Callable[[float], None], threshold: float, interval: float = INTERVAL,
        log_every: float = LOG_EVERY, sample: bool = True,
    ) -> None:
        self._clock = clock
        self._observe = observe
        self.threshold = threshold
        self.interval = interval
        self.log_every = log_every
        self._sample = sample
        self._call: IDelayedCall | None = None
        # (tick number, when it is due): read by the sampler thread.
        self._due: tuple[int, float] = (0, 0.0)
        # (tick number, stack) taken by the sampler for a late tick.
        self._stack: tuple[int, str] | None = None
        self._reactor_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_log: float | None = None
        self.suppressed = 0
        self.stalls = 0

    # -- service -----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._reactor_thread = threading.get_ident()
        self._schedule(self._clock.seconds())
        if self._sample and self.threshold > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run_sampler, name="reactor-watchdog", daemon=True)
            self._thread.start()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(1.0)
            self._thread = None

    # -- the reactor side --------------------------------------------------
    def _schedule(self, now: float) -> None:
        tick = self._due[0] + 1
        self._due = (tick, now + self.interval)
        self._call = self._clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        tick, due = self._due
        lag = max(0.0, now - due)
        self._schedule(now)  # first: a log observer may stop the service
        self._observe(lag)
        if self.threshold > 0 and lag >= self.threshold:
            stack = self._stack
            self._stack = None
            self._stalled(lag, stack[1] if stack is not None and stack[0] == tick else None, now)

    def _stalled(self, lag: float, stack: str | None, now: float) -> None:
        self.stalls += 1
        if self._last_log is not None and now - self._last_log < self.log_every:
            self.suppressed += 1
            return
        self._last_log = now
        held, self.suppressed = self.suppressed, 0
        log.warn(
            "reactor stalled: a turn ran for at least {lag_ms:.0f} ms (stall_warning {threshold_ms:.0f} ms); "
            "reactor thread was in: {stack}; {held} more stall(s) not logged since the last warning",
            lag_ms=lag * 1000, threshold_ms=self.threshold * 1000, held=held,
            stack=stack or "not sampled (the stall ended before the sampler looked)",
        )

    # -- the sampler side ----------------------------------------------------
    def check(self) -> bool:
        """Take the reactor thread's stack if its timer is overdue by
        ``threshold`` or more and this tick has no stack yet; True if taken.
        Called by the sampling thread (or a test)."""
        tick, due = self._due
        if self._clock.seconds() - due < self.threshold:
            return False
        stack = self._stack
        if stack is not None and stack[0] == tick:
            return False
        frame = sys._current_frames().get(self._reactor_thread or -1)
        if frame is None:
            return False
        self._stack = (tick, describe_stack(frame))
        return True

    def _run_sampler(self) -> None:
        # Half the threshold: a stall is caught between 1 and 1.5 thresholds
        # past the timer's due time, with few wake-ups (each one contends for
        # the interpreter lock with the reactor and the database threads).
        period = max(self.threshold / 2, 0.01)
        while not self._stop.wait(period):
            try:
                self.check()
            except Exception:  # never let the watchdog take anything down
                log.failure("reactor watchdog sampler failed")
                return
