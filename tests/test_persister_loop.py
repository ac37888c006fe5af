"""The persister's loop against a real Redis (a private server) and SQLite:
a backlog of several full batches (read ahead while the previous one
commits) is stored exactly once, acknowledged and trimmed from the recent
sets; a round that fails after reading ahead hands the failed batch and
the entries read ahead back as pending, and each is stored once."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.metrics import Metrics
from supportchat.redis.codec import encode_message
from supportchat.redis.persister import GROUP, Persister
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine
from supportchat.storage.models import TEXT, Message
from supportchat.storage.sql import SqlConversationStore
from tests.redis_support import REDIS_SKIP

PREFIX = "looptest:"


class PersisterLoopTests(unittest.TestCase):
    skip = REDIS_SKIP

    @inlineCallbacks
    def setUp(self) -> Any:
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("FLUSHDB")
        self.redis = yield connected_client(self, server.url)
        self.db = Database(SqliteEngine(self.mktemp() + ".sqlite3"), reactor)
        self.db.start()
        self.addCleanup(self.db.close)
        yield self.db.migrate()
        store = SqlConversationStore(self.db)
        self.convs = []
        for n in range(3):
            conv, _ = yield store.open_conversation(f"cust{n}", 1.0)
            self.convs.append(conv.id)
        self.store = store
        self.persister = Persister(reactor, self.redis, self.db, Metrics(), "p1", prefix=PREFIX, batch=10)
        self.calls: list[tuple[int, bool]] = []
        handle = self.persister.handle

        async def recording(entries: Any, retry: bool) -> None:
            self.calls.append((len(entries), retry))
            await handle(entries, retry)

        self.persister.handle = recording  # type: ignore[method-assign]

    @inlineCallbacks
    def fill(self, count: int) -> Any:
        for i in range(count):
            n = i % 3
            msg = Message(self.convs[n], f"m{i}", i // 3 + 1, f"c:cust{n}", "customer", f"k{i}", TEXT, f"b{i}",
                          1000.0 + i)
            yield self.redis.execute("XADD", f"{PREFIX}stream", "*", "m", encode_message(msg))
            yield self.redis.execute("ZADD", f"{PREFIX}recent:{msg.conversation_id}", msg.seq, encode_message(msg))

    @inlineCallbacks
    def run_until_flushed(self, count: int) -> Any:
        self.persister.startService()
        for _ in range(200):
            if self.persister.flushed >= count:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield self.persister.stopService()

    @inlineCallbacks
    def assert_stored_once(self, count: int) -> Any:
        stored = []
        for conv in self.convs:
            stored += (yield self.store.get_messages(conv, 0, 100))
        self.assertEqual(sorted(m.msg_id for m in stored), sorted(f"m{i}" for i in range(count)))
        pending = yield self.redis.execute("XPENDING", f"{PREFIX}stream", GROUP)
        self.assertEqual(pending[0], 0)
        for conv in self.convs:
            self.assertEqual((yield self.redis.execute("ZCARD", f"{PREFIX}recent:{conv}")), 0)

    @inlineCallbacks
    def test_backlog_of_full_batches(self) -> Any:
        """25 entries, batches of 10: three rounds of fresh entries (the
        second and third read ahead), each stored once, all acknowledged,
        the recent sets emptied."""
        yield self.fill(25)
        yield self.run_until_flushed(25)
        yield self.assert_stored_once(25)
        self.assertEqual(self.calls, [(10, False), (10, False), (5, False)])

    @inlineCallbacks
    def test_failed_round_after_read_ahead(self) -> Any:
        """The first batch fails after the next was read ahead: both come
        back as this consumer's pending entries (retry), then the rest
        fresh; each message is stored once."""
        yield self.fill(25)
        commit = self.persister._commit
        failures = [RuntimeError("boom")]

        async def failing_once(messages: Any) -> Any:
            if failures:
                raise failures.pop()
            return await commit(messages)

        self.persister._commit = failing_once  # type: ignore[method-assign]
        yield self.run_until_flushed(25)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        yield self.assert_stored_once(25)
        self.assertEqual(self.calls, [(10, False), (10, True), (10, True), (5, False)])

    @inlineCallbacks
    def test_linger_gathers_what_arrives_after_a_small_batch(self) -> Any:
        """With a linger, a batch that was not full is followed by a pause:
        entries that arrive meanwhile are read (and committed) as one batch,
        not one round each; nothing is stored twice."""
        self.persister.linger = 1.0
        yield self.fill(3)
        self.persister.startService()
        for _ in range(100):
            if self.persister.flushed >= 3:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        for i in range(3, 10):  # while it lingers
            n = i % 3
            msg = Message(self.convs[n], f"m{i}", i // 3 + 1, f"c:cust{n}", "customer", f"k{i}", TEXT, f"b{i}",
                          1000.0 + i)
            yield self.redis.execute("XADD", f"{PREFIX}stream", "*", "m", encode_message(msg))
        for _ in range(300):
            if self.persister.flushed >= 10:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield self.persister.stopService()
        self.assertEqual(self.calls, [(3, False), (7, False)])
        stored = []
        for conv in self.convs:
            stored += (yield self.store.get_messages(conv, 0, 100))
        self.assertEqual(sorted(m.msg_id for m in stored), sorted(f"m{i}" for i in range(10)))
