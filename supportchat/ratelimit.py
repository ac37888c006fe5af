"""Token buckets on the injected clock, per key (an IP, a connection), and
exponential backoff after failures (logins)."""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` tokens per second up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is available."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class KeyedRateLimiter:
    """One bucket per key. Memory stays bounded: when full, the least
    recently used bucket is forgotten (a flood of new keys cannot reset the
    buckets of clients being throttled right now)."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class _Failures:
    __slots__ = ("count", "last", "blocked_until")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.blocked_until = 0.0


class FailureBackoff:
    """Exponential backoff after repeated failures, per key (a login, a
    client address), on the injected clock.

    The first ``free`` failures cost nothing; each one after them blocks
    the key for ``initial * 2**(n - free)`` seconds (n counted from 0), at
    most ``maximum``. A success resets the key; a key with no failure for
    ``forget_after`` seconds starts again from zero. At most ``max_keys``
    keys are remembered (the least recently failed is forgotten first)."""

    def __init__(self, clock: IReactorTime, free: int, initial: float, maximum: float, forget_after: float,
                 max_keys: int = 10_000) -> None:
        self._clock = clock
        self.free = free
        self.initial = initial
        self.maximum = maximum
        self.forget_after = forget_after
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def _live(self, key: str, now: float) -> _Failures | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry.last >= self.forget_after and now >= entry.blocked_until:
            del self._keys[key]
            return None
        return entry

    def retry_after(self, key: str) -> float:
        """Seconds ``key`` must still wait (0: it may try now)."""
        now = self._clock.seconds()
        entry = self._live(key, now)
        return max(0.0, entry.blocked_until - now) if entry is not None else 0.0

    def failed(self, key: str) -> None:
        now = self._clock.seconds()
        entry = self._live(key, now)
        if entry is None:
            while len(self._keys) >= self._max_keys:
                self._keys.popitem(last=False)
            entry = self._keys[key] = _Failures()
        else:
            self._keys.move_to_end(key)
        entry.count += 1
        entry.last = now
        over = entry.count - self.free
        if over > 0:
            entry.blocked_until = now + min(self.maximum, self.initial * 2 ** min(over - 1, 62))

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)
