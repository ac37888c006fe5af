"""supportchat-admin data commands: copy-db (SQLite into PostgreSQL and
MariaDB), export and erase."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from supportchat.storage.copy import _now
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine, engine_from_url
from supportchat.storage.history import SqlHistoryStore
from supportchat.storage.models import EVENT, TEXT, AppendRequest, customer_key
from supportchat.storage.sql import SqlConversationStore
from supportchat.keyring import Keyring
from supportchat.workflow.profiles import ProfileService, SqlProfileStore
from tests import dbs
from tests.test_admin import _AdminCase
from tests.test_profiles import keyring_data


PHONE = "+44 20 7946 0000"
WORKFLOW_TABLES = ("teams", "agents", "refresh_tokens", "work_items", "work_notes", "canned_responses",
                   "customer_profiles", "bot_states", "attachments")


def _seed_workflow_txn(cur: Any, convs: list[str]) -> None:
    """Accounts, the conversations' work items (one rated), notes, canned responses, bot state."""
    cur.execute("INSERT INTO teams (id, name, created_at) VALUES ('t1', 'Billing', 900.0)")
    cur.execute("INSERT INTO agents (id, login, name, role, team_id, capacity, status, load_count, disabled,"
                " password_hash, tokens_valid_after, created_at)"
                " VALUES ('ann', 'ann', 'Ann', 'agent', 't1', 4, 'online', 1, 0, 'scrypt$x', 0, 900.0)")
    cur.execute("INSERT INTO refresh_tokens (token_hash, agent_id, expires_at) VALUES ('h1', 'ann', 99999.0)")
    for n, (conv, customer) in enumerate(zip(convs, ("alice", "bob"))):
        cur.execute("INSERT INTO work_items (conversation_id, customer_id, team_id, state, agent_id, queued_at,"
                    " assigned_at, closed_at, rating, rating_comment, rated_at) VALUES (?, ?, 't1', ?, 'ann', ?, ?,"
                    " ?, ?, ?, ?)",
                    (conv, customer_key(customer), "closed" if n else "assigned", 1000.0 + n, 1001.0 + n, 2000.0 if n else None,
                     5 if n else None, "quick, thanks" if n else None, 2001.0 if n else None))
        for i in range(2):
            cur.execute("INSERT INTO work_notes (conversation_id, author_id, body, ts) VALUES (?, 'ann', ?, ?)",
                        (conv, f"{customer} note {i}", 1003.0 + i))
        cur.execute("INSERT INTO bot_states (conversation_id, version, data, updated_at) VALUES (?, 2, '{}', 1002.0)",
                    (conv,))
    cur.execute("INSERT INTO canned_responses (id, scope, owner, shortcut, title, body, created_by, created_at,"
                " updated_at) VALUES ('k1', 'team', 't1', 'hi', 'Hello', 'Hello there', 'boss', 900.0, 900.0)")


def table_rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table``, sorted (for comparing two databases)."""
    def txn(cur: Any) -> list[tuple[Any, ...]]:
        cur.execute(f"SELECT * FROM {table}")
        return sorted((tuple(r) for r in cur.fetchall()), key=repr)
    return _now(db.run_interaction("rows", txn))


def seed(path: str, keyring: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small SQLite history: two customers, an agent, a closed conversation, Unicode;
    accounts, workflow items, notes, canned responses, bot state; profiles (with a keyring)."""
    db = Database(SqliteEngine(path), reactor=None, threadless=True)
    db.start()
    try:
        _now(db.migrate())
        store, history = SqlConversationStore(db), SqlHistoryStore(db)
        convs = []
        for n, customer in enumerate(["alice", "bob"]):
            conv, _ = _now(store.open_conversation(customer_key(customer), 1000.0 + n))
            _now(store.append(AppendRequest(conversation_id=conv.id, sender_id="ann", sender_role="agent", kind=EVENT,
                                            body="Ann joined", ts=1001.0 + n, data={"name": "joined"}, join=True)))
            for i in range(7):
                _now(store.append(AppendRequest(conversation_id=conv.id, sender_id=customer_key(customer), sender_role="customer",
                                                kind=TEXT, body=f"{customer} says 你好 parcel {i}", ts=1010.0 + i,
                                                client_msg_id=f"{customer}-{i}")))
            convs.append(conv.id)
        _now(history.close_conversation(convs[1], 2000.0))
        _now(db.run_interaction("seed_workflow", _seed_workflow_txn, convs))
        from supportchat.attachments.store import SqlAttachmentStore
        from tests.test_attachments import attachment

        uploads = SqlAttachmentStore(db)
        _now(uploads.add(attachment("a1", uploader=customer_key("alice"), name="收据.pdf")))
        _now(uploads.add(attachment("a2", uploader=customer_key("alice"), thumb_key=None, thumb_type=None)))
        _now(uploads.claim(["a1"], customer_key("alice"), "c:alice\nk", convs[0], 1100.0, 100))
        if keyring is not None:
            profiles = ProfileService(SqlProfileStore(db), Keyring.parse(keyring, "test"), ("phone",))
            for customer in ("alice", "bob"):
                _now(Deferred.fromCoroutine(profiles.put(customer, {"name": customer.title(), "phone": PHONE,
                                                                    "attributes": {"plan": "gold"}}, 1500.0)))
        return {
            "messages": {c: _now(store.get_messages(c, 0, 100)) for c in convs},
            "states": {u: _now(store.get_states(u)) for u in (customer_key("alice"), customer_key("bob"), "ann")},
            "conversations": {c: _now(store.get_conversation(c)) for c in convs},
            "tables": {t: table_rows(db, t) for t in WORKFLOW_TABLES},
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
        """copy-db moves conversations, participants, messages,
        idempotency keys, accounts, workflow items, notes, canned responses,
        profiles and bot state; reads, search and new appends on the target
        behave as on the source; a second run copies nothing twice."""
        url = self.target()
        before = seed(os.path.join(self.data_dir, "supportchat.db"), keyring_data())
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
        for table, rows in before["tables"].items():
            self.assertTrue(rows, table)
            self.assertEqual(table_rows(db, table), rows, f"{table} differs after two copies")
        found = _now(history.search(customer_key("alice"), "parcel", 100))
        self.assertEqual(len(found), 7)
        alice_conv = next(iter(before["messages"]))
        again = _now(store.append(AppendRequest(conversation_id=alice_conv, sender_id=customer_key("alice"), sender_role="customer",
                                                kind=TEXT, body="parcel 3", ts=1013.0, client_msg_id="alice-3")))
        self.assertTrue(again.duplicate)  # the idempotency key came along
        new = _now(store.append(AppendRequest(conversation_id=alice_conv, sender_id=customer_key("alice"), sender_role="customer",
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
        """export writes the customer's JSON (messages, workflow with notes, the profile
        decrypted); erase needs --yes, then removes it all, profile and workflow records
        included, and leaves others alone."""
        keyring = keyring_data()
        os.environ["SUPPORTCHAT_PROFILE_KEYRING"] = json.dumps(keyring)
        self.addCleanup(os.environ.pop, "SUPPORTCHAT_PROFILE_KEYRING", None)
        path = os.path.join(self.data_dir, "supportchat.db")
        seed(path, keyring)
        out_file = os.path.join(self.data_dir, "alice.json")
        code, _, err = self.run_main("export", "--data-dir", self.data_dir, "--customer", "alice", "--output", out_file)
        self.assertEqual(code, 0, err)
        with open(out_file, encoding="utf-8") as f:
            data = json.load(f)
        [conv] = data["conversations"]
        self.assertEqual((data["customer_id"], len(conv["messages"])), ("alice", 8))
        self.assertIn("你好", conv["messages"][1]["body"])
        self.assertEqual((conv["workflow"]["agent_id"], [n["body"] for n in conv["workflow"]["notes"]]),
                         ("ann", ["alice note 0", "alice note 1"]))
        self.assertEqual((data["profile"]["name"], data["profile"]["phone"], data["profile"]["masked"]),
                         ("Alice", PHONE, []))
        os.environ.pop("SUPPORTCHAT_PROFILE_KEYRING")
        code, out, _ = self.run_main("export", "--data-dir", self.data_dir, "--customer", "bob")
        bob = json.loads(out)["profile"]
        self.assertEqual((code, bob["name"], bob["encrypted"]), (0, "Bob", ["phone"]))  # no keyring: stays sealed
        self.assertNotIn(PHONE, out)
        self.assertEqual(json.loads(out)["conversations"][0]["workflow"]["rating"], 5)
        code, _, err = self.run_main("erase", "--data-dir", self.data_dir, "--customer", "alice")
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)
        code, out, _ = self.run_main("erase", "--data-dir", self.data_dir, "--customer", "alice", "--yes")
        self.assertEqual(code, 0)
        self.assertIn("erased customer alice", out)
        code, out, _ = self.run_main("export", "--data-dir", self.data_dir, "--customer", "alice")
        self.assertEqual((json.loads(out)["conversations"], json.loads(out)["profile"]), ([], None))
        code, out, _ = self.run_main("export", "--data-dir", self.data_dir, "--customer", "bob")
        self.assertEqual(len(json.loads(out)["conversations"][0]["messages"]), 8)
        db = Database(SqliteEngine(path), reactor=None, threadless=True)
        db.start()
        self.addCleanup(db.close)
        for table in ("work_items", "work_notes", "bot_states", "customer_profiles"):
            left = table_rows(db, table)
            self.assertTrue(left, table)
            self.assertNotIn("alice", repr(left), f"{table} still holds alice's rows")
