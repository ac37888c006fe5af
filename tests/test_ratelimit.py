"""Tests for supportchat.ratelimit: token buckets on an injected clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from supportchat.ratelimit import KeyedRateLimiter, TokenBucket


def drain(take) -> int:
    """How many calls succeed before the first refusal (bounded)."""
    n = 0
    while n < 10_000 and take():
        n += 1
    return n


class TokenBucketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.bucket = TokenBucket(rate=2.0, burst=5, now=self.clock.seconds())

    def take(self) -> bool:
        return self.bucket.take(self.clock.seconds())

    def test_starts_full(self):
        """A new bucket allows a burst of exactly ``burst`` requests."""
        self.assertEqual(drain(self.take), 5)

    def test_refills_at_rate(self):
        """After draining, tokens come back at ``rate`` per second."""
        drain(self.take)
        self.clock.advance(0.4)
        self.assertFalse(self.take())
        self.clock.advance(0.1)
        self.assertTrue(self.take())
        self.assertFalse(self.take())
        self.clock.advance(1.5)
        self.assertEqual(drain(self.take), 3)

    def test_caps_at_burst(self):
        """A long idle period refills to ``burst``, no more."""
        drain(self.take)
        self.clock.advance(3600)
        self.assertEqual(drain(self.take), 5)

    def test_refusal_costs_nothing(self):
        """Refused requests do not push the next allowed one further away."""
        drain(self.take)
        for _ in range(10):
            self.assertFalse(self.take())
        self.clock.advance(0.5)
        self.assertTrue(self.take())

    def test_retry_after(self):
        """retry_after says how long until one token is available."""
        drain(self.take)
        self.assertAlmostEqual(self.bucket.retry_after(), 0.5)
        self.clock.advance(0.25)
        self.assertFalse(self.take())
        self.assertAlmostEqual(self.bucket.retry_after(), 0.25)
        self.clock.advance(0.25)
        self.assertEqual(self.bucket.retry_after(), 0.25)  # not refreshed until take()
        self.assertTrue(self.take())

    def test_retry_after_zero_when_available(self):
        """retry_after is 0 while a token is available."""
        self.assertEqual(self.bucket.retry_after(), 0.0)

    def test_cost(self):
        """A request may cost several tokens."""
        self.assertTrue(self.bucket.take(self.clock.seconds(), cost=4))
        self.assertFalse(self.bucket.take(self.clock.seconds(), cost=2))
        self.assertTrue(self.take())


class KeyedRateLimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def test_per_key_independence(self):
        """Exhausting one key's bucket does not limit another key."""
        limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=3)
        self.assertEqual(drain(lambda: limiter.allow("10.0.0.1")), 3)
        self.assertFalse(limiter.allow("10.0.0.1"))
        self.assertEqual(drain(lambda: limiter.allow("10.0.0.2")), 3)

    def test_refills_on_clock(self):
        """A limited key is allowed again once the clock has refilled a token."""
        limiter = KeyedRateLimiter(self.clock, rate=2.0, burst=2)
        drain(lambda: limiter.allow("a"))
        self.clock.advance(0.49)
        self.assertFalse(limiter.allow("a"))
        self.clock.advance(0.01)
        self.assertTrue(limiter.allow("a"))

    def test_memory_bounded(self):
        """However many distinct keys arrive, at most max_keys buckets are kept."""
        limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=5, max_keys=10)
        for i in range(1000):
            limiter.allow(f"k{i}")
            self.assertLessEqual(len(limiter), 10)
            if i % 7 == 0:
                self.clock.advance(0.3)

    def test_least_recently_used_bucket_is_forgotten(self):
        """When room is needed, the bucket used longest ago goes first."""
        limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=2, max_keys=3)
        for key in ("a", "b", "c"):
            limiter.allow(key)
        limiter.allow("a")  # a is now the most recently used
        self.assertTrue(limiter.allow("d"))
        self.assertEqual(len(limiter), 3)
        self.assertFalse(limiter.allow("a"))  # a kept its state: 2 tokens used
        self.assertTrue(limiter.allow("b"))  # b was forgotten: a fresh bucket

    def test_flood_of_new_keys_does_not_reset_a_limited_key(self):
        """A key being limited right now stays limited while new keys arrive."""
        limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=2, max_keys=3)
        drain(lambda: limiter.allow("a"))
        for i in range(10):
            limiter.allow(f"new{i}")
            self.assertFalse(limiter.allow("a"))
        self.assertEqual(len(limiter), 3)

    def test_no_pruning_below_max(self):
        """Below max_keys, limited keys keep their state."""
        limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=1, max_keys=100)
        for i in range(50):
            self.assertTrue(limiter.allow(f"k{i}"))
        for i in range(50):
            self.assertFalse(limiter.allow(f"k{i}"))
        self.assertEqual(len(limiter), 50)
