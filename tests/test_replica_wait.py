"""``[redis] wait_replicas``: a message is acknowledged only once a replica
has it (Redis WAIT); otherwise the sender gets ``unavailable`` with
``retry_after`` and its retry (same ``client_msg_id``) is acknowledged and
delivered once the replica is back."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.redis.connection import RedisUnavailable
from supportchat.redis.replicas import ReplicasBehind, ReplicaWait
from supportchat.storage.models import EVENT
from supportchat.storage.sql import SqlConversationStore
from tests.redis_support import REDIS_SKIP, PrivateRedis, connected_client
from tests.test_storage_contract import msg, threadless_sqlite


class FakeRedis:
    """Records commands; each reply is fired by the test."""

    def __init__(self) -> None:
        self.current: Any = object()
        self.sent: list[tuple[Any, ...]] = []
        self.replies: list[Deferred[Any]] = []

    rechecks = 0

    def recheck_primary(self) -> None:
        self.rechecks += 1

    def protocol(self) -> Any:
        if self.current is None:
            raise RedisUnavailable("not connected")
        return self.current

    def execute(self, *args: Any) -> "Deferred[Any]":
        self.sent.append(args)
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        return d


class ReplicaWaitTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.wait = ReplicaWait(self.clock, self.redis, 1, 0.5, 2.0, "sc:wait-fence")  # type: ignore[arg-type]

    def test_waits_in_flight_share_the_next_round(self) -> None:
        """Appends confirmed while a WAIT is out wait for one more WAIT,
        sent after their writes; each round confirms all of its appends."""
        conn = self.redis.current
        first = self.wait.wait(conn, fence=False)
        self.assertEqual(self.redis.sent, [("WAIT", 1, 500)])
        second = self.wait.wait(conn, fence=False)
        third = self.wait.wait(conn, fence=False)
        self.assertEqual(len(self.redis.sent), 1)
        self.redis.replies[0].callback(1)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.redis.sent, [("WAIT", 1, 500)] * 2)
        self.assertNoResult(second)
        self.redis.replies[1].callback(1)
        self.assertIsNone(self.successResultOf(second))
        self.assertIsNone(self.successResultOf(third))

    def test_a_duplicate_is_confirmed_after_a_fence_write(self) -> None:
        """A duplicate's original may come from another connection: its
        round writes a fence first, so WAIT covers everything before it."""
        d = self.wait.wait(self.redis.current, fence=True)
        self.assertEqual(self.redis.sent, [("INCR", "sc:wait-fence"), ("WAIT", 1, 500)])
        self.redis.replies[0].callback(7)
        self.redis.replies[1].callback(1)
        self.assertIsNone(self.successResultOf(d))

    def test_too_few_replicas_refuses_for_retry_after(self) -> None:
        """A WAIT answered by too few replicas fails its appends with
        ``unavailable`` and ``retry_after``; further appends are refused at
        once for that long, then tried again."""
        d = self.wait.wait(self.redis.current, fence=False)
        self.redis.replies[0].callback(0)
        error = self.failureResultOf(d, ReplicasBehind).value
        self.assertEqual((error.code, error.retry_after), ("unavailable", 2.0))
        self.assertRaises(ReplicasBehind, self.wait.check)
        self.clock.advance(2.0)
        self.wait.check()
        self.assertEqual(self.wait.timeouts, 1)
        self.assertEqual(self.redis.rechecks, 1, "the sentinels were not asked whether the primary moved")

    def test_a_changed_connection_is_not_confirmed(self) -> None:
        """An append made on a connection that has since been replaced
        (maybe another server) is never confirmed by a WAIT on the new one."""
        old = self.redis.current
        self.redis.current = object()
        d = self.wait.wait(old, fence=False)
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.redis.sent, [])

    def test_connection_lost_during_wait(self) -> None:
        """A WAIT whose connection breaks fails as Redis being unreachable
        (the store then commits to SQL, as for any lost reply)."""
        d = self.wait.wait(self.redis.current, fence=False)
        self.redis.replies[0].errback(RedisUnavailable("lost"))
        self.failureResultOf(d, RedisUnavailable)


class StoreWithReplicaTests(unittest.TestCase):
    """RedisChatStore on a private primary with one replica."""

    timeout = 60
    skip = REDIS_SKIP

    @inlineCallbacks
    def setUp(self) -> Any:
        self.primary = PrivateRedis()
        self.primary.start()
        self.addCleanup(self.primary.cleanup)
        self.replica = PrivateRedis(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.replica.start()
        self.addCleanup(self.replica.cleanup)
        yield self.until_replica_in_sync()
        self.redis = yield connected_client(self, self.primary.url)
        self.clock = Clock()

        from supportchat.redis.store import RedisChatStore

        self.store = RedisChatStore(self.clock, self.redis, SqlConversationStore(threadless_sqlite(self)),
                                    retry_after=2.0, wait_replicas=1, wait_timeout=0.2)
        self.conv, _ = yield self.store.open_conversation("cust", 1000.0)

    @inlineCallbacks
    def test_ack_waits_for_the_replica_and_a_refused_message_is_retried(self) -> Any:
        """With the replica up a message is acknowledged and is on the
        replica; with it stopped the message is refused (unavailable, retry
        after 2 s), then refused at once without writing; with it back, the
        retry with the same client_msg_id is the same message, reported as
        new so it is delivered, and a second retry is a plain duplicate.
        Lifecycle events are not refused."""
        first = yield self.store.append(msg(self.conv.id, "cust", "k1"))
        self.assertFalse(first.duplicate)
        self.assertEqual(self.replica.cli("EXISTS", "sc:dedup:cust:k1"), "1")
        self.replica.stop()
        refused = yield self.assertFailure(self.store.append(msg(self.conv.id, "cust", "k2")), ReplicasBehind)
        self.assertEqual((refused.code, refused.retry_after), ("unavailable", 2.0))
        length = self.primary.cli("XLEN", "sc:stream")
        yield self.assertFailure(self.store.append(msg(self.conv.id, "cust", "k3")), ReplicasBehind)
        self.assertEqual(self.primary.cli("XLEN", "sc:stream"), length, "a refused-at-once append was written")
        event = yield self.store.append(msg(self.conv.id, "cust", None, kind=EVENT, data={"name": "note"}))
        self.assertFalse(event.duplicate)
        self.replica.start()
        yield self.until_replica_in_sync()
        self.clock.advance(2.0)
        retry = yield self.store.append(msg(self.conv.id, "cust", "k2"))
        self.assertFalse(retry.duplicate)
        again = yield self.store.append(msg(self.conv.id, "cust", "k2"))
        self.assertTrue(again.duplicate)
        self.assertEqual(again.message.msg_id, retry.message.msg_id)
        self.assertEqual(self.replica.cli("EXISTS", "sc:dedup:cust:k2"), "1")

    @inlineCallbacks
    def until_replica_in_sync(self) -> Any:
        from tests.traffic import until

        yield until(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
                    "the replica to sync", 20)
