"""Canned responses: the CannedStore contract on the in-memory twin,
SQLite, PostgreSQL and MariaDB, and the REST authorization matrix
(customers, agents of the team and of another team, admins, disabled
accounts, expired tokens); the ``canned`` frame that tells consoles of a
change."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.workflow.canned import Canned, MemoryCannedStore, SqlCannedStore
from supportchat.workflow.models import WorkflowError
from tests.dbs import StoreContract, threadless_db
from tests.support import connect, start_server, token
from tests.test_workflow import PASSWORD, Api


def canned(cid: str, scope: str, owner: str, shortcut: str, body: str = "text") -> Canned:
    return Canned(cid, scope, owner, shortcut, "", body, "boss", 1.0, 1.0)


class CannedStoreContract(StoreContract):
    def test_visibility_by_team_and_owner(self) -> None:
        """An agent sees their team's and their own responses, by shortcut; admins (None) every team's."""
        for c in (canned("1", "team", "sales", "ship"), canned("2", "team", "billing", "refund"),
                  canned("3", "personal", "ann", "hi"), canned("4", "personal", "bob", "hi"),
                  canned("5", "personal", "ann", "ship")):
            self.ok(self.store.create(c))
        ann = self.ok(self.store.visible(["sales"], "ann"))
        self.assertEqual([(c.id, c.shortcut) for c in ann], [("3", "hi"), ("1", "ship"), ("5", "ship")])
        every = self.ok(self.store.visible(None, "boss"))
        self.assertEqual([c.id for c in every], ["2", "1"])
        self.assertEqual(self.ok(self.store.visible([], "bob")), [self.ok(self.store.get("4"))])

    def test_shortcut_unique_per_owner_update_delete(self) -> None:
        """The same shortcut twice for one owner is a conflict (create and rename); update and delete."""
        self.ok(self.store.create(canned("1", "team", "sales", "ship")))
        self.ok(self.store.create(canned("2", "team", "billing", "ship")))  # another owner: fine
        self.failureResultOf(self.store.create(canned("3", "team", "sales", "ship")),  # type: ignore[attr-defined]
                             WorkflowError)
        self.ok(self.store.create(canned("3", "team", "sales", "ret")))
        self.failureResultOf(self.store.update("3", {"shortcut": "ship"}, 2.0),  # type: ignore[attr-defined]
                             WorkflowError)
        updated = self.ok(self.store.update("3", {"title": "Returns", "body": "30 days", "owner": "x"}, 3.0))
        self.assertEqual((updated.title, updated.body, updated.owner, updated.updated_at),
                         ("Returns", "30 days", "sales", 3.0))
        self.assertEqual(self.ok(self.store.get("3")), updated)
        self.assertIsNone(self.ok(self.store.update("nope", {"body": "x"}, 4.0)))
        self.assertTrue(self.ok(self.store.delete("3")))
        self.assertFalse(self.ok(self.store.delete("3")))
        self.assertIsNone(self.ok(self.store.get("3")))


class MemoryCannedStoreTests(CannedStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryCannedStore()


class _Sql(CannedStoreContract):
    kind = "sqlite"

    def make_store(self) -> Any:
        db = threadless_db(self, self.kind)
        self.successResultOf(db.run_interaction("clean", lambda cur: cur.execute("DELETE FROM canned_responses")))
        return SqlCannedStore(db)


class SqliteCannedStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "sqlite"


class PostgresCannedStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "postgresql"


class MariadbCannedStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "mysql"


class CannedApiTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.api = Api(self.server.port)
        self.admin = token("boss", "admin", name="Boss")
        for team in ("sales", "billing"):
            yield self.api.call("POST", "/teams", self.admin, {"id": team, "name": team.title()})
        self.tokens: dict[str, str] = {}
        for login, team in (("ann", "sales"), ("bob", "billing"), ("dan", "sales")):
            code, _ = yield self.api.call("POST", "/agents", self.admin, {
                "login": login, "name": login.title(), "team": team, "password": PASSWORD})
            self.assertEqual(code, 201)
            code, body = yield self.api.call("POST", "/login", None, {"login": login, "password": PASSWORD})
            self.tokens[login] = body["access_token"]

    @inlineCallbacks
    def test_agents_manage_personal_admins_team_responses(self) -> Any:
        """Admins create team responses, agents personal ones; each sees their team's and their own;
        shortcut prefix filter; duplicate shortcut 409; validation 400."""
        code, team = yield self.api.call("POST", "/canned", self.admin,
                                         {"scope": "team", "team": "sales", "shortcut": "Ship", "title": "Shipping",
                                          "body": "Ships in 2 days."})
        self.assertEqual((code, team["shortcut"], team["owner"]), (201, "ship", "sales"))
        code, mine = yield self.api.call("POST", "/canned", self.tokens["ann"], {"shortcut": "hi", "body": "Hello!"})
        self.assertEqual((code, mine["scope"], mine["owner"]), (201, "personal", "ann"))
        code, _ = yield self.api.call("POST", "/canned", self.tokens["ann"], {"shortcut": "hi", "body": "Again"})
        self.assertEqual(code, 409)
        for bad in ({"shortcut": "has space", "body": "x"}, {"shortcut": "ok", "body": ""},
                    {"shortcut": "ok", "body": "x", "scope": "global"},
                    {"scope": "team", "team": "nope", "shortcut": "x", "body": "x"}):
            code, err = yield self.api.call("POST", "/canned", self.admin, bad)
            self.assertEqual((code, err["error"]["code"]), (400, "bad_request"), bad)
        code, listing = yield self.api.call("GET", "/canned", self.tokens["ann"])
        self.assertEqual([c["shortcut"] for c in listing["canned"]], ["hi", "ship"])
        code, listing = yield self.api.call("GET", "/canned?shortcut=sh", self.tokens["ann"])
        self.assertEqual([c["id"] for c in listing["canned"]], [team["id"]])
        code, listing = yield self.api.call("GET", "/canned", self.tokens["bob"])
        self.assertEqual(listing["canned"], [])
        code, listing = yield self.api.call("GET", "/canned", self.admin)
        self.assertEqual([c["id"] for c in listing["canned"]], [team["id"]])
        code, listing = yield self.api.call("GET", "/canned?team=billing", self.tokens["ann"])
        self.assertEqual(code, 403)
        code, changed = yield self.api.call("PATCH", f"/canned/{mine['id']}", self.tokens["ann"], {"body": "Hi there"})
        self.assertEqual((code, changed["body"]), (200, "Hi there"))

    @inlineCallbacks
    def test_authorization_matrix(self) -> Any:
        """Every canned endpoint for customer, owner, same-team agent, other team, admin, disabled, expired."""
        _, team = yield self.api.call("POST", "/canned", self.admin,
                                      {"scope": "team", "team": "sales", "shortcut": "ship", "body": "Ships soon"})
        _, mine = yield self.api.call("POST", "/canned", self.tokens["ann"], {"shortcut": "hi", "body": "Hello"})
        _, dans = yield self.api.call("POST", "/canned", self.tokens["dan"], {"shortcut": "yo", "body": "Yo"})
        yield self.api.call("PATCH", "/agents/dan", self.admin, {"disabled": True})
        who = {
            "customer": token("cust"), "ann": self.tokens["ann"], "other_team": self.tokens["bob"],
            "admin": self.admin, "disabled": self.tokens["dan"],
            "expired": token("ann", "agent", now=time.time() - 7200),
        }
        t, m = f"/canned/{team['id']}", f"/canned/{mine['id']}"
        # for customer, ann (owner / same team), bob (other team), admin, disabled dan, expired
        matrix = [
            ("GET", "/canned", None, (403, 200, 200, 200, 401, 401)),
            ("POST", "/canned", {"shortcut": "new1", "body": "x"}, (403, 201, 201, 201, 401, 401)),
            ("POST", "/canned", {"scope": "team", "team": "sales", "shortcut": "t2", "body": "x"},
             (403, 403, 403, 201, 401, 401)),
            ("GET", t, None, (403, 200, 404, 200, 401, 401)),
            ("PATCH", t, {"title": "T"}, (403, 403, 404, 200, 401, 401)),
            ("GET", m, None, (403, 200, 404, 404, 401, 401)),
            ("PATCH", m, {"title": "Mine"}, (403, 200, 404, 404, 401, 401)),
            ("GET", f"/canned/{dans['id']}", None, (403, 404, 404, 404, 401, 401)),
            ("DELETE", m, None, (403, 200, 404, 404, 401, 401)),
            ("DELETE", t, None, (403, 403, 404, 200, 401, 401)),
        ]
        roles = ("customer", "ann", "other_team", "admin", "disabled", "expired")
        for method, path, body, codes in matrix:
            got = []
            for role in roles:
                if method == "POST" and body is not None:
                    body = dict(body, shortcut=f"{body['shortcut'][:2]}{role[:3]}")
                code, answer = yield self.api.call(method, path, who[role], body)
                got.append(code)
                if code >= 400:
                    self.assertIn("code", answer["error"])
            self.assertEqual(tuple(got), codes, f"{method} {path}")

    @inlineCallbacks
    def test_consoles_are_told_of_changes(self) -> Any:
        """A team response created, changed or deleted by an admin reaches the
        team's connected agents as a ``canned`` frame (no text in it), not
        another team's; a personal one only its owner's connections."""
        ann = yield connect(self.server.port, self.tokens["ann"])
        bob = yield connect(self.server.port, self.tokens["bob"])
        dan = yield connect(self.server.port, self.tokens["dan"])
        for c in (ann, bob, dan):
            self.addCleanup(c.transport.loseConnection)
        code, team = yield self.api.call("POST", "/canned", self.admin,
                                         {"scope": "team", "team": "sales", "shortcut": "ship", "body": "Soon"})
        self.assertEqual(code, 201)
        for c in (ann, dan):
            frame = yield c.next_frame("canned")
            self.assertEqual(frame, {"type": "canned", "scope": "team", "team": "sales"})
        yield self.api.call("PATCH", f"/canned/{team['id']}", self.admin, {"body": "Tomorrow"})
        yield ann.next_frame("canned")
        yield self.api.call("DELETE", f"/canned/{team['id']}", self.admin)
        yield ann.next_frame("canned")
        code, _ = yield self.api.call("POST", "/canned", self.tokens["bob"], {"shortcut": "yo", "body": "Yo"})
        self.assertEqual(code, 201)
        mine = yield bob.next_frame("canned")
        self.assertEqual(mine, {"type": "canned", "scope": "personal"})
        self.assertEqual(len(bob.of_type("canned")), 1)  # the sales team's three changes never reached billing
        code, _ = yield self.api.call("POST", "/canned", self.tokens["ann"], {"shortcut": "hi", "body": "Hello"})
        yield ann.next_frame("canned", lambda f: f["scope"] == "personal")
        self.assertEqual([f["scope"] for f in dan.of_type("canned")], ["team"] * 3)  # never ann's personal one
