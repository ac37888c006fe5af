"""Token buckets on the injected clock, per key (an IP, a connection)."""

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
