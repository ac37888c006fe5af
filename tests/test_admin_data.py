"""supportchat-admin data commands: copy-db (SQLite into PostgreSQL and
MariaDB), export and erase."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial import unittest

from supportchat.storage.copy import _now
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine, engine_from_url
from supportchat.storage.history import SqlHistoryStore
from supportchat.storage.models import EVENT, TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore
from tests import dbs
from tests.test_admin import _AdminCase


def seed(path: str) -> dict[str, Any]:
    """A small SQLite history: two customers, an agent, a closed conversation, Unicode."""
    db = Database(SqliteEngine(path), reactor=None, threadless=True)
    db.start()
    try:
        _now(db.migrate())
        store, history = SqlConversationStore(db), SqlHistoryStore(db)
        convs = []
        for n, customer in enumerate(["alice", "bob"]):
            conv, _ = _now(store.open_conversation(customer, 1000.0 + n))
            _now(store.append(AppendRequest(conversation_id=conv.id, sender_id="ann", sender_role="agent", kind=EVENT,
                                            body="Ann joined", ts=1001.0 + n, data={"name": "joined"}, join=True)))
            for i in range(7):
                _now(store.append(AppendRequest(conversation_id=conv.id, sender_id=customer, sender_role="customer",
                                                kind=TEXT, body=f"{customer} says 你好 parcel {i}", ts=1010.0 + i,
                                                client_msg_id=f"{customer}-{i}")))
            convs.append(conv.id)
        _now(history.close_conversation(convs[1], 2000.0))
        return {
            "messages": {c: _now(store.get_messages(c, 0, 100)) for c in convs},
            "states": {u: _now(store.get_states(u)) for u in ("alice", "bob", "ann")},
            "conversations": {c: _now(store.get_conversation(c)) for c in convs},
        }
    finally:
        db.close()


class PostgresCopyDbTests(_AdminCase):
    kind = "postgresql"

    def target(self) -> str:
        reason = dbs.unreachable(self.kind)
        if reason:
            raise unittest.SkipTest(reason)
        url, drop = dbs.create_database(self.kind)
        self.addCleanup(drop)
        return url

    def test_copy_sqlite_into_server_keeps_every_row_and_can_run_again(self) -> None:
        """copy-db moves conversations, participants, messages and
        idempotency keys; reads, search and new appends on the target behave
        as on the source; a second run copies nothing twice."""
        url = self.target()
        before = seed(os.path.join(self.data_dir, "supportchat.db"))
        code, out, err = self.run_main("copy-db", "--data-dir", self.data_dir, "--to", url, "--batch", "4")
        self.assertEqual(code, 0, err)
        self.assertIn("messages 16", out)
        self.assertIn("conversations 2", out)
        self.assertIn("messages: 16 rows copied", err)
        code, out, _ = self.run_main("copy-db", "--data-dir", self.data_dir, "--to", url)
        self.assertEqual(code, 0)
        self.assertIn("messages 16", out)
        db = Database(engine_from_url(url), reactor=None, threadless=True)
        db.start()
        self.addCleanup(db.close)
        store, history = SqlConversationStore(db), SqlHistoryStore(db)
        for conv_id, msgs in before["messages"].items():
            self.assertEqual(_now(store.get_messages(conv_id, 0, 100)), msgs)
            self.assertEqual(_now(store.get_conversation(conv_id)), before["conversations"][conv_id])
        for user, states in before["states"].items():
            self.assertEqual(_now(store.get_states(user)), states)
        found = _now(history.search("alice", "parcel", 100))
        self.assertEqual(len(found), 7)
        alice_conv = next(iter(before["messages"]))
        again = _now(store.append(AppendRequest(conversation_id=alice_conv, sender_id="alice", sender_role="customer",
                                                kind=TEXT, body="parcel 3", ts=1013.0, client_msg_id="alice-3")))
        self.assertTrue(again.duplicate)  # the idempotency key came along
        new = _now(store.append(AppendRequest(conversation_id=alice_conv, sender_id="alice", sender_role="customer",
                                              kind=TEXT, body="next", ts=3000.0, client_msg_id="alice-new")))
        self.assertEqual(new.message.seq, 9)

    def test_copy_needs_a_source_and_a_target(self) -> None:
        """No SQLite file: exit 1 naming it; no target URL anywhere: exit 2."""
        code, _, err = self.run_main("copy-db", "--data-dir", self.data_dir, "--to", "postgresql://h/db")
        self.assertEqual(code, 1)
        self.assertIn("no SQLite database at", err)
        code, _, err = self.run_main("copy-db", "--data-dir", self.data_dir)
        self.assertEqual(code, 2)
        self.assertIn("--to", err)


class MariadbCopyDbTests(PostgresCopyDbTests):
    kind = "mysql"


class ExportEraseCommandTests(_AdminCase):
    def test_export_then_erase_from_the_command_line(self) -> None:
        """export writes the customer's JSON; erase needs --yes, then removes it all and leaves others alone."""
        seed(os.path.join(self.data_dir, "supportchat.db"))
        out_file = os.path.join(self.data_dir, "alice.json")
        code, _, err = self.run_main("export", "--data-dir", self.data_dir, "--customer", "alice", "--output", out_file)
        self.assertEqual(code, 0, err)
        with open(out_file, encoding="utf-8") as f:
            data = json.load(f)
        [conv] = data["conversations"]
        self.assertEqual((data["customer_id"], len(conv["messages"])), ("alice", 8))
        self.assertIn("你好", conv["messages"][1]["body"])
        code, _, err = self.run_main("erase", "--data-dir", self.data_dir, "--customer", "alice")
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)
        code, out, _ = self.run_main("erase", "--data-dir", self.data_dir, "--customer", "alice", "--yes")
        self.assertEqual(code, 0)
        self.assertIn("erased customer alice", out)
        code, out, _ = self.run_main("export", "--data-dir", self.data_dir, "--customer", "alice")
        self.assertEqual(json.loads(out)["conversations"], [])
        code, out, _ = self.run_main("export", "--data-dir", self.data_dir, "--customer", "bob")
        self.assertEqual(len(json.loads(out)["conversations"][0]["messages"]), 8)
