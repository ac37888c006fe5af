"""REST history, search and the admin privacy endpoints, over real HTTP on
an in-process server; once per engine (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from supportchat.storage.models import EVENT, TEXT, AppendRequest, customer_key
from tests import dbs
from tests.support import http_client, start_server, token


class RestHistoryTests(unittest.TestCase):
    """On SQLite; subclasses run the same on the server engines."""

    engine = "sqlite"

    def database(self) -> dict[str, Any]:
        if self.engine == "sqlite":
            return {}
        reason = dbs.unreachable(self.engine)
        if reason:
            raise unittest.SkipTest(reason)
        url = dbs.shared_database(self.engine)
        from supportchat.storage.engines import engine_from_url

        dbs.clean(engine_from_url(url))
        return {"url": url}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, database=self.database())
        self.base = f"http://127.0.0.1:{self.server.port}/api/v1"
        self.http = http_client()
        store = self.server.server.get_store()
        self.conv, _ = yield store.open_conversation(customer_key("alice"), 1000.0)
        yield store.append(AppendRequest(
            conversation_id=self.conv.id, sender_id="ann", sender_role="agent", kind=EVENT,
            body="Ann joined the conversation", ts=1000.5, data={"name": "joined"}, join=True,
        ))
        for i in range(1, 10):
            body = "where is my refund" if i == 3 else f"message number {i}"
            yield store.append(AppendRequest(
                conversation_id=self.conv.id, sender_id=customer_key("alice"), sender_role="customer", kind=TEXT,
                body=body, ts=1000.0 + i, client_msg_id=f"k{i}",
            ))
        self.other, _ = yield store.open_conversation(customer_key("bob"), 2000.0)
        yield store.append(AppendRequest(
            conversation_id=self.other.id, sender_id=customer_key("bob"), sender_role="customer", kind=TEXT,
            body="refund for bob", ts=2001.0, client_msg_id="b1",
        ))

    @inlineCallbacks
    def get(self, path: str, user: str | None = None, role: str = "customer", method: str = "GET") -> Any:
        headers = {"Authorization": f"Bearer {token(user, role)}"} if user else {}
        response = yield self.http.request(method, self.base + path, headers=headers)
        body = yield response.content()
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response.code, json.loads(body)

    @inlineCallbacks
    def test_history_pages_by_keyset(self) -> Any:
        """after_seq pages forward, before_seq pages back from the end; has_more says whether to go on."""
        path = f"/conversations/{self.conv.id}/messages"
        code, body = yield self.get(path + "?limit=4", "alice")
        self.assertEqual(code, 200)
        self.assertEqual(body["conversation"]["id"], self.conv.id)
        self.assertEqual([m["seq"] for m in body["messages"]], [1, 2, 3, 4])
        self.assertTrue(body["has_more"])
        self.assertEqual(body["messages"][0]["kind"], "event")
        _, body = yield self.get(path + "?after_seq=8&limit=4", "alice")
        self.assertEqual(([m["seq"] for m in body["messages"]], body["has_more"]), ([9, 10], False))
        _, body = yield self.get(path + "?before_seq=11&limit=3", "alice")
        self.assertEqual(([m["seq"] for m in body["messages"]], body["has_more"]), ([8, 9, 10], True))
        _, body = yield self.get(path + "?before_seq=3&limit=3", "alice")
        self.assertEqual(([m["seq"] for m in body["messages"]], body["has_more"]), ([1, 2], False))
        _, body = yield self.get(path + "?after_seq=2&before_seq=6", "alice")
        self.assertEqual([m["body"] for m in body["messages"]], ["message number 2", "where is my refund", "message number 4"])
        self.assertFalse(body["has_more"])

    @inlineCallbacks
    def test_history_is_authorized_like_frames(self) -> Any:
        """The customer and the joined agent read it; another customer, an agent who did not join, and a missing id all get 404; admins read any."""
        path = f"/conversations/{self.conv.id}/messages"
        for user, role, expected in [
            ("alice", "customer", 200), ("ann", "agent", 200), ("root", "admin", 200),
            ("bob", "customer", 404), ("zed", "agent", 404), ("Alice", "customer", 404),
        ]:
            code, body = yield self.get(path, user, role)
            self.assertEqual(code, expected, (user, role))
            if expected == 404:
                self.assertEqual(body, {"error": {"code": "not_found", "message": "no such conversation"}})
        code, body = yield self.get("/conversations/c-nope/messages", "root", "admin")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))

    @inlineCallbacks
    def test_errors_are_json(self) -> Any:
        """No token or a bad token: 401; bad parameters: 400; unknown paths and methods: 404 and 405."""
        path = f"/conversations/{self.conv.id}/messages"
        code, body = yield self.get(path)
        self.assertEqual((code, body["error"]["code"]), (401, "unauthorized"))
        response = yield self.http.get(self.base + path, headers={"Authorization": "Bearer not-a-jwt"})
        self.assertEqual((response.code, (yield response.json())["error"]["code"]), (401, "unauthorized"))
        for query in ("?limit=0", "?limit=100000", "?after_seq=x", "?before_seq=0", "?after_seq=-1"):
            code, body = yield self.get(path + query, "alice")
            self.assertEqual((code, body["error"]["code"]), (400, "bad_request"), query)
        code, body = yield self.get(f"/conversations/{self.conv.id}/other", "alice")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        code, body = yield self.get(path, "alice", method="POST")
        self.assertEqual((code, body["error"]["code"]), (405, "bad_request"))
        code, body = yield self.get("/search", "alice")
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    @inlineCallbacks
    def test_search_in_what_the_user_may_read(self) -> Any:
        """Customers and agents find words in their own conversations only; admins everywhere."""
        code, body = yield self.get("/search?q=REFUND", "alice")
        self.assertEqual(code, 200)
        self.assertEqual([m["body"] for m in body["messages"]], ["where is my refund"])
        _, body = yield self.get("/search?q=refund", "ann", "agent")
        self.assertEqual([m["conversation"] for m in body["messages"]], [self.conv.id])
        _, body = yield self.get("/search?q=refund", "zed", "agent")
        self.assertEqual(body["messages"], [])
        _, body = yield self.get("/search?q=refund", "root", "admin")
        self.assertEqual([m["body"] for m in body["messages"]], ["refund for bob", "where is my refund"])
        _, body = yield self.get("/search?q=" + quote("number refund"), "alice")
        self.assertEqual(body["messages"], [])
        _, body = yield self.get("/search?q=refund&limit=1", "root", "admin")
        self.assertEqual(len(body["messages"]), 1)

    @inlineCallbacks
    def test_admin_export_and_erase(self) -> Any:
        """Admins export a customer's data (conversations, profile) as JSON and erase it,
        profile included; others get 403."""
        yield Deferred.fromCoroutine(self.server.server.get_profiles().put(
            "alice", {"name": "Alice", "email": "alice@example.com"}, 1000.0))
        code, body = yield self.get("/admin/customers/alice/export", "alice")
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden"))
        code, body = yield self.get("/admin/customers/alice", "ann", "agent", method="DELETE")
        self.assertEqual((code, body["error"]["code"]), (403, "forbidden"))
        code, body = yield self.get("/admin/customers/alice/export", "root", "admin")
        self.assertEqual(code, 200)
        [conv] = body["conversations"]
        self.assertEqual((conv["id"], len(conv["messages"])), (self.conv.id, 10))
        self.assertEqual((body["profile"]["name"], body["profile"]["email"]), ("Alice", "alice@example.com"))
        code, body = yield self.get("/admin/customers/alice", "root", "admin", method="DELETE")
        self.assertEqual((code, body["erased"]), (200, True))
        self.assertGreaterEqual(body["deleted_rows"], 12)
        _, body = yield self.get("/admin/customers/alice/export", "root", "admin")
        self.assertEqual((body["conversations"], body["profile"]), ([], None))
        code, _ = yield self.get(f"/conversations/{self.conv.id}/messages", "alice")
        self.assertEqual(code, 404)
        code, body = yield self.get(f"/conversations/{self.other.id}/messages", "bob")
        self.assertEqual((code, len(body["messages"])), (200, 1))


class PostgresRestHistoryTests(RestHistoryTests):
    engine = "postgresql"


class MariadbRestHistoryTests(RestHistoryTests):
    engine = "mysql"
