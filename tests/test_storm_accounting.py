"""The reconnect storm's exactly-once accounting (bench/resume.py).

bench/storm.py's verdict is only as good as ``exactly_once``: these tests
feed it synthetic acks, receipts and final logs and check that each kind of
failure a storm can cause is counted, and that a clean run passes.
"""

from __future__ import annotations

import importlib.util
import os
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resume() -> Any:
    spec = importlib.util.spec_from_file_location("bench_resume", os.path.join(ROOT, "bench", "resume.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


resume = _resume()

# conversation c1: seq 1-2 are events, 3-5 messages a, b, c
ACKED = {"a": ("c1", 3), "b": ("c1", 4), "c": ("c1", 5)}
LOG = {"c1": [(1, None), (2, None), (3, "a"), (4, "b"), (5, "c")]}


class ExactlyOnceTests(SynchronousTestCase):
    """exactly_once over synthetic event lists."""

    def test_clean_run_passes(self) -> None:
        """Every acked message received once at its seq, a contiguous log:
        the verdict is ok and every message counts as delivered once."""
        v = resume.exactly_once(ACKED, [("c1", 3, "a"), ("c1", 4, "b"), ("c1", 5, "c")], LOG)
        self.assertTrue(v["ok"])
        self.assertEqual((v["acked"], v["delivered_once"], v["missing"]), (3, 3, 0))
        self.assertEqual(v["log"]["messages"], 5)

    def test_missing_delivery_fails(self) -> None:
        """An acked message its receiver never processed is missing."""
        v = resume.exactly_once(ACKED, [("c1", 3, "a"), ("c1", 5, "c")], LOG)
        self.assertFalse(v["ok"])
        self.assertEqual(v["missing"], 1)
        self.assertEqual(v["examples"]["missing"], ["b"])

    def test_message_stored_twice_fails(self) -> None:
        """A resend stored as a second message (same client_msg_id at two
        seqs) shows both in the receipts and in the log."""
        log = {"c1": LOG["c1"] + [(6, "b")]}
        v = resume.exactly_once(ACKED, [("c1", 3, "a"), ("c1", 4, "b"), ("c1", 5, "c"), ("c1", 6, "b")], log)
        self.assertFalse(v["ok"])
        self.assertEqual(v["duplicated"], 1)
        self.assertEqual(v["log"]["repeated_client_msg_id"], 1)

    def test_wrong_seq_and_gap_fail(self) -> None:
        """A receipt at another seq than the ack's, and a log with a hole."""
        v = resume.exactly_once(ACKED, [("c1", 3, "a"), ("c1", 4, "b"), ("c1", 7, "c")], LOG)
        self.assertEqual(v["wrong_seq"], 1)
        gap = {"c1": [(1, None), (2, None), (3, "a"), (4, "b"), (6, "c")]}
        v = resume.exactly_once({"a": ("c1", 3), "b": ("c1", 4)}, [("c1", 3, "a"), ("c1", 4, "b")], gap)
        self.assertFalse(v["ok"])
        self.assertEqual(v["log"]["conversations_with_gaps"], 1)

    def test_acked_but_absent_from_the_log_fails(self) -> None:
        """An ack for a message the server's log does not hold (lost after
        the ack) fails even when the receiver saw it live."""
        log = {"c1": [(1, None), (2, None), (3, "a"), (4, "b")]}
        v = resume.exactly_once(ACKED, [("c1", 3, "a"), ("c1", 4, "b"), ("c1", 5, "c")], log)
        self.assertFalse(v["ok"])
        self.assertEqual(v["log"]["acked_not_in_log"], 1)

    def test_unacked_but_delivered_is_not_a_failure(self) -> None:
        """A message stored and delivered whose ack never reached the
        sender is counted apart, not as a failure."""
        v = resume.exactly_once({"a": ("c1", 3)}, [("c1", 3, "a"), ("c1", 4, "b")], LOG)
        self.assertTrue(v["ok"])
        self.assertEqual(v["received_unacked"], 1)


class BackoffTests(SynchronousTestCase):
    """The reconnect delay mirrors sc-client.js's backoffDelay."""

    def test_full_jitter_within_floor_and_cap(self) -> None:
        """Delays lie in [0.25 s, min(15 s, 0.5 s * 2^attempt)] and spread
        over that range (full jitter)."""
        rng = random.Random(1)
        for attempt, cap in ((0, 0.5), (3, 4.0), (10, 15.0)):
            delays = [resume.backoff_delay(attempt, rng) for _ in range(2000)]
            self.assertGreaterEqual(min(delays), 0.25)
            self.assertLessEqual(max(delays), cap)
            self.assertGreater(max(delays), cap * 0.9)
