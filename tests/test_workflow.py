"""The support workflow end to end over real sockets and REST: accounts and
login, status, automatic assignment, queue positions, transfer with an
internal note, close, rating and the CSAT report, disabling; and the
authorization matrix for every workflow frame and endpoint."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import Api, ConnectionRefused, ask_bot, close_client, connect, is_chat, start_server, token

PASSWORD = "correct horse battery"


class WorkflowTests(unittest.TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.api = Api(self.server.port)
        self.admin = token("boss", "admin", name="Boss")
        for team in ("sales", "billing"):
            code, _ = yield self.api.call("POST", "/teams", self.admin, {"id": team, "name": team.title()})
            self.assertEqual(code, 201)
        for login, team in (("ann", "sales"), ("bob", "billing"), ("dan", "sales")):
            code, body = yield self.api.call("POST", "/agents", self.admin, {
                "login": login, "name": login.title(), "team": team, "capacity": 2, "password": PASSWORD})
            self.assertEqual(code, 201, body)
            self.assertNotIn("password_hash", body)
        self.tokens = {}
        for login in ("ann", "bob", "dan"):
            code, body = yield self.api.call("POST", "/login", None, {"login": login, "password": PASSWORD})
            self.assertEqual(code, 200, body)
            self.tokens[login] = body["access_token"]
            self.refresh = body["refresh_token"]
        self.clients: list[Any] = []

    @inlineCallbacks
    def tearDown(self) -> Any:
        for c in self.clients:
            yield close_client(c)

    @inlineCallbacks
    def ws(self, bearer: str) -> Any:
        c = yield connect(self.server.port, bearer)
        self.clients.append(c)
        return c

    @inlineCallbacks
    def reply(self, client: Any, frame: dict[str, Any]) -> Any:
        """Send with a fresh ref and return the frame answering it."""
        ref = f"r{time.monotonic_ns()}"
        client.send(dict(frame, ref=ref))
        while True:
            got = yield client.next_frame()
            if isinstance(got, dict) and got.get("ref") == ref:
                return got

    @inlineCallbacks
    def assigned_conversation(self) -> Any:
        cust = yield self.ws(token("cust"))
        cust.send({"type": "start", "team": "sales"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        self.assertEqual((yield cust.next_frame("queue"))["position"], 1)
        ann = yield self.ws(self.tokens["ann"])
        status = yield self.reply(ann, {"type": "status", "status": "online"})
        self.assertEqual((status["type"], status["agent"]["capacity"]), ("agent_status", 2))
        while True:
            frame = yield ann.next_frame("message")
            if frame["event"]["name"] == "assigned":
                break
        self.assertEqual((frame["conversation"], frame["event"]["user"]["id"]), (conv, "ann"))
        return cust, ann, conv

    @inlineCallbacks
    def test_internal_notes_are_staff_only_entries_of_the_conversation(self) -> Any:
        """A note is placed after the conversation's last message, returned to
        its writer, pushed to the staff and to the agent it @mentions, and
        given by sync to staff only: the customer gets no note frame and no
        notes in sync or REST history (but the agents' names, in ``names``), and cannot write one. A transfer's note reaches an agent
        who was not connected at the time through sync."""
        cust, ann, conv = yield self.assigned_conversation()
        acked = yield self.reply(cust, {"type": "message", "conversation": conv, "client_msg_id": "n1", "body": "hi"})
        dan = yield self.ws(self.tokens["dan"])
        note = yield self.reply(ann, {"type": "note", "conversation": conv, "body": "@dan VIP customer, @nobody here"})
        self.assertEqual((note["type"], note["after_seq"], note["mentions"], note["author"]["id"]),
                         ("note", acked["seq"], ["dan"], "ann"))
        pushed = yield dan.next_frame("note")
        self.assertEqual((pushed["id"], pushed["body"]), (note["id"], "@dan VIP customer, @nobody here"))
        refused = yield self.reply(cust, {"type": "note", "conversation": conv, "body": "let me in"})
        self.assertEqual((refused["type"], refused["code"]), ("error", "not_found"))
        history = yield self.reply(ann, {"type": "sync", "conversation": conv, "after_seq": 0})
        self.assertEqual([(n["id"], n["author"]["name"]) for n in history["notes"]], [(note["id"], "Ann")])
        later = yield self.reply(ann, {"type": "sync", "conversation": conv, "after_seq": acked["seq"] + 1})
        self.assertNotIn("notes", later)  # placed after an earlier message: not in this page
        ann.send({"type": "message", "conversation": conv, "client_msg_id": "a1", "body": "Hello from Ann"})
        yield cust.next_frame("message", lambda f: f.get("body") == "Hello from Ann")
        mine = yield self.reply(cust, {"type": "sync", "conversation": conv, "after_seq": 0})
        self.assertNotIn("notes", mine)
        self.assertEqual(mine["names"], {"ann": "Ann"})  # the customer sees who wrote, by name
        code, page = yield self.api.call("GET", f"/conversations/{conv}/messages", self.tokens["ann"])
        self.assertEqual((code, [n["id"] for n in page["notes"]], page["names"]), (200, [note["id"]], {"ann": "Ann"}))
        code, page = yield self.api.call("GET", f"/conversations/{conv}/messages", token("cust"))
        self.assertEqual((code, "notes" in page, page["names"]), (200, False, {"ann": "Ann"}))  # REST history too
        # a transfer's note, to an agent who is not connected when it is written
        yield close_client(dan)
        done = yield self.reply(ann, {"type": "transfer", "conversation": conv, "to_agent": "dan",
                                      "note": "Wants a refund"})
        self.assertEqual(done["type"], "transferred")
        dan2 = yield self.ws(self.tokens["dan"])
        history = yield self.reply(dan2, {"type": "sync", "conversation": conv, "after_seq": 0})
        self.assertEqual([n["body"] for n in history["notes"]], ["@dan VIP customer, @nobody here", "Wants a refund"])
        self.assertEqual(cust.of_type("note"), [])
        self.assertNotIn("VIP", json.dumps(cust.frames))
        self.assertNotIn("refund", json.dumps(cust.frames))

    @inlineCallbacks
    def test_queued_entries_show_the_first_message_and_its_language(self) -> Any:
        """GET /api/v1/inbox?state=queued gives each queued conversation the
        customer's first text message (cut at 140 characters) and its
        language: the one the visitor's client gave with ``start``, else a
        guess from the script: who waits, and for what, without joining."""
        cust = yield self.ws(token("cust"))
        cust.send({"type": "start", "team": "sales"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        first = "你好，我的订单在哪里？" + "很急" * 100
        acked = yield self.reply(cust, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": first})
        self.assertEqual(acked["type"], "ack")
        yield self.reply(cust, {"type": "message", "conversation": conv, "client_msg_id": "q2", "body": "hello?"})
        other = yield self.ws(token("cust2"))
        other.send({"type": "start", "team": "sales"})
        quiet = (yield other.next_frame("conversation"))["conversation"]["id"]
        said = yield self.ws(token("cust3"))
        said.send({"type": "start", "team": "sales", "lang": "pt-BR"})
        told = (yield said.next_frame("conversation"))["conversation"]["id"]
        yield self.reply(said, {"type": "message", "conversation": told, "client_msg_id": "p1", "body": "Hello"})
        code, body = yield self.api.call("GET", "/inbox?state=queued", self.tokens["ann"])
        self.assertEqual(code, 200)
        by_id = {c["conversation"]: c for c in body["conversations"]}
        self.assertEqual((by_id[conv]["preview"], by_id[conv]["lang"]), (first[:140], "zh"))
        self.assertEqual((by_id[quiet]["preview"], by_id[quiet]["lang"]), (None, None))
        # The language the visitor's client gave at start beats any guess (Latin script says nothing).
        self.assertEqual((by_id[told]["preview"], by_id[told]["lang"]), ("Hello", "pt-BR"))
        bad = yield self.reply(said, {"type": "start", "lang": "<script>"})
        self.assertEqual((bad["type"], bad["code"]), ("error", "bad_request"))

    @inlineCallbacks
    def test_team_works_a_conversation_end_to_end(self) -> Any:
        """Login, online, automatic assignment, messages, transfer with a note
        the customer never sees, close, rating, CSAT report, refresh token."""
        cust, ann, conv = yield self.assigned_conversation()
        cust.send({"type": "message", "conversation": conv, "client_msg_id": "m1", "body": "hello"})
        self.assertEqual((yield ann.next_frame("message"))["body"], "hello")
        dan = yield self.ws(self.tokens["dan"])
        yield self.reply(dan, {"type": "status", "status": "online"})
        done = yield self.reply(ann, {"type": "transfer", "conversation": conv, "to_agent": "dan",
                                      "note": "VIP, be nice"})
        self.assertEqual((done["type"], done["item"]["agent_id"]), ("transferred", "dan"))
        note = yield dan.next_frame("note")
        self.assertEqual(note["body"], "VIP, be nice")
        closed = yield self.reply(dan, {"type": "close", "conversation": conv})
        self.assertEqual(closed["type"], "closed")
        rated = yield self.reply(cust, {"type": "rate", "conversation": conv, "rating": 4, "comment": "ok"})
        self.assertEqual(rated["type"], "rated")
        history = yield self.reply(cust, {"type": "sync", "conversation": conv})
        names = [m["event"]["name"] for m in history["messages"] if m["kind"] == "event"]
        self.assertEqual(names, ["created", "queued", "assigned", "transferred", "closed"])
        self.assertNotIn("VIP", json.dumps(cust.frames))
        code, report = yield self.api.call("GET", "/csat", self.admin)
        self.assertEqual((code, report["count"], report["by_agent"]["dan"]["average"]), (200, 1, 4.0))
        code, detail = yield self.api.call("GET", f"/inbox/{conv}", self.admin)
        self.assertEqual((code, detail["state"], detail["notes"][0]["body"]), (200, "closed", "VIP, be nice"))
        code, body = yield self.api.call("POST", "/refresh", None, {"refresh_token": self.refresh})
        self.assertEqual(code, 200)
        code, _ = yield self.api.call("POST", "/refresh", None, {"refresh_token": self.refresh})
        self.assertEqual(code, 401)  # one use

    @inlineCallbacks
    def test_consoles_see_the_queue_live(self) -> Any:
        """Agents of the team get an inbox frame when a conversation is queued and when
        another agent takes it (another team's agent gets none); hello lists the team's
        queue; a transfer target gets the conversation frame."""
        ann = yield self.ws(self.tokens["ann"])
        dan = yield self.ws(self.tokens["dan"])
        bob = yield self.ws(self.tokens["bob"])
        cust = yield self.ws(token("cust"))
        cust.send({"type": "start", "team": "sales"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        for agent in (ann, dan):
            inbox = yield agent.next_frame("inbox")
            self.assertEqual((inbox["item"]["conversation"], inbox["item"]["state"]), (conv, "queued"))
        late = yield self.ws(self.tokens["dan"])
        self.assertEqual([q["id"] for q in late.frames[0]["queue"]], [conv])
        taken = yield self.reply(ann, {"type": "take", "conversation": conv})
        self.assertEqual(taken["type"], "conversation")
        inbox = yield dan.next_frame("inbox", lambda f: f["item"]["state"] != "queued")
        self.assertEqual((inbox["item"]["state"], inbox["item"]["agent_id"]), ("assigned", "ann"))
        yield self.reply(dan, {"type": "status", "status": "online"})
        yield self.reply(ann, {"type": "transfer", "conversation": conv, "to_agent": "dan"})
        given = yield dan.next_frame("conversation", lambda f: f.get("assigned") is True)
        self.assertEqual(given["conversation"]["id"], conv)
        yield self.reply(bob, {"type": "ping"})  # everything sent before this has arrived
        self.assertEqual(bob.of_type("inbox"), [])
        self.assertEqual(bob.frames[0]["queue"], [])

    @inlineCallbacks
    def test_an_admin_change_reaches_the_agent_live(self) -> Any:
        """PATCH an agent's team and capacity: their console gets agent_status with the new
        values at once, and from then on the inbox frames of the new team, not the old one."""
        dan = yield self.ws(self.tokens["dan"])
        code, _ = yield self.api.call("PATCH", "/agents/dan", self.admin, {"team": "billing", "capacity": 5})
        self.assertEqual(code, 200)
        status = yield dan.next_frame("agent_status")
        self.assertEqual((status["agent"]["team"], status["agent"]["capacity"]), ("billing", 5))
        for i, team in enumerate(("sales", "billing")):
            c = yield self.ws(token(f"cust-{team}"))
            c.send({"type": "start", "team": team, "ref": "s"})
            yield c.next_frame("conversation")
        inbox = yield dan.next_frame("inbox")
        self.assertEqual(inbox["item"]["team"], "billing")
        yield self.reply(dan, {"type": "ping"})
        self.assertEqual([f["item"]["team"] for f in dan.of_type("inbox")], ["billing"])

    @inlineCallbacks
    def test_inbox_filters_unread_and_waiting(self) -> Any:
        """GET /inbox: unread=true lists the conversations whose agent has unread messages
        (with the count), and none once read; waiting_min lists only those queued that long;
        a bad unread value is a 400."""
        cust, ann, conv = yield self.assigned_conversation()
        for i in range(2):
            yield self.reply(cust, {"type": "message", "conversation": conv, "client_msg_id": f"u{i}", "body": "hi"})
        code, body = yield self.api.call("GET", "/inbox?unread=true", self.tokens["ann"])
        self.assertEqual((code, [(c["conversation"], c["unread"]) for c in body["conversations"]]), (200, [(conv, 2)]))
        last = max(m["seq"] for m in ann.of_type("message"))
        yield self.reply(ann, {"type": "read", "conversation": conv, "seq": last})
        code, body = yield self.api.call("GET", "/inbox?unread=true", self.tokens["ann"])
        self.assertEqual(body["conversations"], [])
        other = yield self.ws(token("cust2"))
        other.send({"type": "start", "team": "billing", "ref": "s"})  # nobody of billing is online
        yield other.next_frame("queue")
        code, body = yield self.api.call("GET", "/inbox?waiting_min=0", self.admin)
        self.assertEqual([(c["state"], c["team"]) for c in body["conversations"]], [("queued", "billing")])
        code, body = yield self.api.call("GET", "/inbox?waiting_min=3600", self.admin)
        self.assertEqual(body["conversations"], [])
        code, body = yield self.api.call("GET", "/inbox?unread=maybe", self.tokens["ann"])
        self.assertEqual((code, body["error"]["code"]), (400, "bad_request"))

    @inlineCallbacks
    def test_message_after_close_reopens_within_window(self) -> Any:
        """A customer message after close reopens the conversation (events
        "reopened" and "queued": back in the queue) within reopen_window."""
        cust, ann, conv = yield self.assigned_conversation()
        yield self.reply(cust, {"type": "close", "conversation": conv})
        ack = yield self.reply(cust, {"type": "message", "conversation": conv, "client_msg_id": "x", "body": "more"})
        self.assertEqual(ack["type"], "ack")
        history = yield self.reply(cust, {"type": "sync", "conversation": conv})
        names = [m["event"]["name"] for m in history["messages"] if m["kind"] == "event"]
        self.assertEqual(names[:6], ["created", "queued", "assigned", "closed", "reopened", "queued"])

    @inlineCallbacks
    def test_disabling_closes_sockets_and_revokes_tokens(self) -> Any:
        """PATCH disabled=true: the agent's socket closes with 1008, their
        conversations go back to the queue, the old token is refused."""
        cust, ann, conv = yield self.assigned_conversation()
        code, body = yield self.api.call("PATCH", "/agents/ann", self.admin, {"disabled": True})
        self.assertEqual((code, body["disabled"]), (200, True))
        was_clean, close_code, _ = yield ann.closed
        self.assertEqual(close_code, 1008)
        self.clients.remove(ann)
        code, item = yield self.api.call("GET", f"/inbox/{conv}", self.admin)
        self.assertEqual(item["state"], "queued")
        code, _ = yield self.api.call("GET", "/teams", self.tokens["ann"])
        self.assertEqual(code, 401)
        code, _ = yield self.api.call("POST", "/login", None, {"login": "ann", "password": PASSWORD})
        self.assertEqual(code, 401)

    @inlineCallbacks
    def test_frame_authorization_matrix(self) -> Any:
        """Every frame type (workflow and chat) for customer, another customer, assigned
        agent, agent of another team, admin; disabled agent and expired token cannot connect."""
        cust, ann, conv = yield self.assigned_conversation()
        bob = yield self.ws(self.tokens["bob"])
        admin = yield self.ws(self.admin)
        other = yield self.ws(token("mallory"))
        expect = [
            (cust, {"type": "status", "status": "online"}, "forbidden"),
            (cust, {"type": "take", "conversation": conv}, "forbidden"),
            (cust, {"type": "transfer", "conversation": conv, "to_team": "billing"}, "forbidden"),
            (cust, {"type": "rate", "conversation": conv, "rating": 5}, "conflict"),
            (other, {"type": "close", "conversation": conv}, "not_found"),
            (other, {"type": "rate", "conversation": conv, "rating": 5}, "not_found"),
            (bob, {"type": "take", "conversation": conv}, "not_found"),
            (bob, {"type": "transfer", "conversation": conv, "to_team": "billing"}, "not_found"),
            (bob, {"type": "close", "conversation": conv}, "not_found"),
            (bob, {"type": "rate", "conversation": conv, "rating": 5}, "forbidden"),
            (ann, {"type": "rate", "conversation": conv, "rating": 5}, "forbidden"),
            (ann, {"type": "transfer", "conversation": conv, "to_agent": "nobody"}, "not_found"),
            (admin, {"type": "rate", "conversation": conv, "rating": 5}, "forbidden"),
            (ann, {"type": "start"}, "forbidden"),
            (other, {"type": "start", "team": "no-such-team"}, "not_found"),  # nobody would ever answer it
            (admin, {"type": "message", "conversation": conv, "client_msg_id": "a", "body": "x"}, "not_found"),
        ]
        for intruder in (other, bob):  # neither a participant nor an admin: the conversation does not exist
            expect += [
                (intruder, {"type": "message", "conversation": conv, "client_msg_id": "i", "body": "x"}, "not_found"),
                (intruder, {"type": "sync", "conversation": conv}, "not_found"),
                (intruder, {"type": "typing", "conversation": conv}, "not_found"),
                (intruder, {"type": "read", "conversation": conv, "seq": 1}, "not_found"),
                (intruder, {"type": "accept", "conversation": conv},
                 "forbidden" if intruder is other else "not_found"),
            ]
        for client, frame, code in expect:
            got = yield self.reply(client, frame)
            self.assertEqual((got["type"], got.get("code")), ("error", code), frame)
        for client, frame, kind in [
            (cust, {"type": "sync", "conversation": conv}, "history"),
            (ann, {"type": "message", "conversation": conv, "client_msg_id": "m", "body": "hello"}, "ack"),
            (ann, {"type": "read", "conversation": conv, "seq": 1}, "read"),
            (admin, {"type": "sync", "conversation": conv}, "history"),  # admins read any conversation
            (bob, {"type": "status", "status": "away"}, "agent_status"),
            (admin, {"type": "take", "conversation": conv}, "conversation"),  # observes, not assigned
            (admin, {"type": "transfer", "conversation": conv, "to_team": "sales"}, "transferred"),
            (cust, {"type": "close", "conversation": conv}, "closed"),
            (cust, {"type": "rate", "conversation": conv, "rating": 5}, "rated"),
        ]:
            got = yield self.reply(client, frame)
            self.assertEqual(got["type"], kind, (frame, got))
        yield self.api.call("PATCH", "/agents/dan", self.admin, {"disabled": True})
        with self.assertRaises(ConnectionRefused):  # 401 at the handshake (supportchat.http.authn)
            yield connect(self.server.port, self.tokens["dan"], wait_hello=False)
        with self.assertRaises(ConnectionRefused):
            yield connect(self.server.port, token("ann", "agent", now=time.time() - 7200))

    @inlineCallbacks
    def test_endpoint_authorization_matrix(self) -> Any:
        """Every workflow endpoint for customer, agent, agent of another team,
        admin, disabled agent and expired token."""
        cust, ann, conv = yield self.assigned_conversation()
        yield self.api.call("PATCH", "/agents/dan", self.admin, {"disabled": True})
        who = {
            "customer": token("cust"), "agent": self.tokens["ann"], "other_team": self.tokens["bob"],
            "admin": self.admin, "disabled": self.tokens["dan"],
            "expired": token("ann", "agent", now=time.time() - 7200),
        }
        new_agent = {"login": "eve", "password": PASSWORD}
        # endpoint -> expected status for customer, agent, other_team, admin, disabled, expired
        matrix = [
            ("GET", "/agents", None, (403, 200, 200, 200, 401, 401)),
            ("GET", "/agents/ann", None, (403, 200, 404, 200, 401, 401)),
            ("POST", "/agents", new_agent, (403, 403, 403, 201, 401, 401)),
            ("PATCH", "/agents/bob", {"capacity": 3}, (403, 403, 403, 200, 401, 401)),
            ("GET", "/teams", None, (403, 200, 200, 200, 401, 401)),
            ("POST", "/teams", {"id": "vip", "name": "VIP"}, (403, 403, 403, 201, 401, 401)),
            ("PATCH", "/teams/sales", {"name": "Sales"}, (403, 403, 403, 200, 401, 401)),
            ("GET", "/inbox", None, (403, 200, 200, 200, 401, 401)),
            ("GET", f"/inbox/{conv}", None, (403, 200, 404, 200, 401, 401)),
            ("GET", "/csat", None, (403, 403, 403, 200, 401, 401)),
        ]
        roles = ("customer", "agent", "other_team", "admin", "disabled", "expired")
        for method, path, body, codes in matrix:
            got = []
            for role in roles:
                code, answer = yield self.api.call(method, path, who[role], body)
                got.append(code)
                if code >= 400:
                    self.assertIn("code", answer["error"])
            self.assertEqual(tuple(got), codes, f"{method} {path}")
        code, _ = yield self.api.call("POST", "/login", None, {"login": "ann", "password": "wrong password"})
        self.assertEqual(code, 401)


class BotFirstTests(unittest.TestCase):
    """With the bot enabled a new conversation stays with the bot until it
    hands off, then enters the queue exactly as without it."""

    timeout = 60

    @inlineCallbacks
    def test_bot_first_then_queue_then_agent(self) -> Any:
        """Customer starts -> bot greeting (no queue position, not assigned to
        the online agent) -> asks for a human -> handoff event -> queued ->
        assigned to the agent -> the bot is silent afterwards."""
        running = yield start_server(self, bot={"enabled": True})
        api = Api(running.port)
        admin = token("boss", "admin", name="Boss")
        code, _ = yield api.call("POST", "/agents", admin, {"login": "ann", "name": "Ann", "capacity": 2,
                                                             "password": PASSWORD})
        self.assertEqual(code, 201)
        code, body = yield api.call("POST", "/login", None, {"login": "ann", "password": PASSWORD})
        ann = yield connect(running.port, body["access_token"])
        self.addCleanup(close_client, ann)
        ann.send({"type": "status", "status": "online", "ref": "st"})
        yield ann.next_frame("agent_status")
        cust = yield connect(running.port, token("cust"))
        self.addCleanup(close_client, cust)
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        greeting = yield cust.next_frame("message", is_chat)
        self.assertEqual(greeting["sender"]["role"], "bot")

        def ask(key: str, body: str) -> Any:
            return ask_bot(cust, conv, key, body)

        self.assertIn("Monday to Friday", (yield ask("q1", "when are you open"))["body"])
        code, item = yield api.call("GET", f"/inbox/{conv}", admin)
        self.assertEqual((code, item["state"], item["agent_id"]), (200, "bot", None))
        self.assertNotIn("queue", [f.get("type") for f in cust.frames if isinstance(f, dict)])
        self.assertNotIn("assigned", [(f.get("event") or {}).get("name") for f in ann.frames
                                      if isinstance(f, dict) and f.get("type") == "message"])
        yield ask("q2", "human")
        event = yield cust.next_frame("message")
        self.assertEqual((event["kind"], event["event"]["name"]), ("event", "handoff"))
        transcript = event["event"]["transcript"]
        self.assertEqual(transcript["from_seq"], 1)
        queued = yield cust.next_frame("queue")
        self.assertEqual((queued["conversation"], queued["position"]), (conv, 1))
        while True:
            frame = yield ann.next_frame("message")
            if (frame.get("event") or {}).get("name") == "assigned":
                break
        self.assertEqual((frame["conversation"], frame["event"]["user"]["id"]), (conv, "ann"))
        ann.send({"type": "sync", "ref": "h", "conversation": conv, "after_seq": 0, "limit": 100})
        history = yield ann.next_frame("history")
        seqs = [m["seq"] for m in history["messages"]
                if transcript["from_seq"] <= m["seq"] <= transcript["to_seq"]]
        self.assertEqual(seqs, list(range(transcript["from_seq"], transcript["to_seq"] + 1)))
        cust.send({"type": "message", "ref": "q3", "conversation": conv, "client_msg_id": "q3",
                   "body": "opening hours"})
        ack = yield cust.next_frame("ack")
        ann.send({"type": "message", "ref": "r", "conversation": conv, "client_msg_id": "r", "body": "Hi, Ann here"})
        reply = yield cust.next_frame("message")
        while reply["sender"]["role"] != "agent":
            self.assertLessEqual(reply["seq"], ack["seq"], "the bot spoke after the agent was assigned")
            reply = yield cust.next_frame("message")
        self.assertEqual(reply["seq"], ack["seq"] + 1)
        code, item = yield api.call("GET", f"/inbox/{conv}", admin)
        self.assertEqual((item["state"], item["agent_id"]), ("assigned", "ann"))
