"""The hot path leaves no reference cycles behind (issue 13).

Garbage in a cycle is freed only by the collector; on a busy node a
collector pass over tens of thousands of such objects stalled the reactor
for 40-80 ms every few seconds, which was most of the latency tail. These
tests run real work with automatic collection off and count what
``gc.collect()`` finds unreachable afterwards: it must not grow with the
amount of work.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine
from supportchat.storage.models import EVENT, TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore


class NoCycleTests(TestCase):
    def setUp(self) -> None:
        self.db = Database(SqliteEngine(self.mktemp() + ".db"), reactor, pool_size=1)
        self.db.start()
        self.addCleanup(self.db.close)
        self.store = SqlConversationStore(self.db)
        self.addCleanup(gc.enable)

    @inlineCallbacks
    def garbage_after(self, appends: int) -> Any:
        """Cyclic garbage left by ``appends`` sequential appends."""
        gc.collect()
        gc.disable()
        for i in range(appends):
            yield self.store.append(AppendRequest(
                conversation_id=self.conv, sender_id="cust", sender_role="customer", kind=TEXT,
                body=f"message {i}", ts=1000.0 + i, client_msg_id=f"k{appends}-{i}"))
        found = gc.collect()
        gc.enable()
        return found

    @inlineCallbacks
    def test_sql_appends_leave_no_cyclic_garbage(self) -> Any:
        """Appending through the pooled database (group commit, the pool's
        thread, the retry wrapper) leaves less than one unreachable object
        per message: what there is does not grow with the number of
        messages. (Each append used to leave about ten: two closures that
        called each other, and Twisted's self-referencing thread job.)"""
        yield self.db.migrate()
        conv, _ = yield self.store.open_conversation("cust", 1000.0)
        self.conv = conv.id
        yield self.store.append(AppendRequest(
            conversation_id=conv.id, sender_id="agent", sender_role="agent", kind=EVENT, body="joined",
            ts=1000.0, data={"name": "joined"}, join=True))
        few = yield self.garbage_after(20)
        many = yield self.garbage_after(220)
        self.assertLess(many - few, 200, f"{few} unreachable objects after 20 appends, {many} after 220")
