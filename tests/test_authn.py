"""One authentication path (supportchat.http.authn): the WebSocket handshake
and every authenticated REST route refuse, with 401 JSON, the token of a
disabled account, a revoked token and a token whose role is no longer the
account's (issue 12, finding 5: a disabled admin's token exported and
erased customers and read and searched all history)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial import unittest

from supportchat.auth import AuthError, Principal, account_refusal
from supportchat.http.authn import Authenticator
from supportchat.workflow.models import Agent
from tests.support import Api, connect, raw_handshake, start_server, token

PASSWORD = "correct horse battery"

# Every route under /api/v1 that needs no token.
PUBLIC = {b"visitors", b"login", b"refresh", b"openapi.json", b"widget-config", b"unsubscribe"}

# Each authenticated route with every method it serves: (method, path, body).
ROUTES: dict[bytes, list[tuple[str, str, Any]]] = {
    b"conversations": [("GET", "/conversations/c1/messages", None)],
    b"search": [("GET", "/search?q=hello", None)],
    b"admin": [("GET", "/admin/customers/cust1/export", None), ("DELETE", "/admin/customers/cust1", None)],
    b"me": [("GET", "/me", None)],
    b"attachments": [("GET", "/attachments/a1", None), ("GET", "/attachments/a1/thumbnail", None),
                     ("POST", "/attachments", {"file": "x"})],
    b"agents": [("GET", "/agents", None), ("GET", "/agents/ann", None),
                ("POST", "/agents", {"login": "eve", "password": PASSWORD}),
                ("PATCH", "/agents/ann", {"capacity": 4})],
    b"teams": [("GET", "/teams", None), ("POST", "/teams", {"id": "vip", "name": "VIP"}),
               ("PATCH", "/teams/sales", {"name": "Sales"})],
    b"inbox": [("GET", "/inbox", None), ("GET", "/inbox/c1", None)],
    b"csat": [("GET", "/csat", None)],
    b"canned": [("GET", "/canned", None), ("POST", "/canned", {"shortcut": "hi", "body": "Hello"}),
                ("PATCH", "/canned/x", {"body": "x"}), ("DELETE", "/canned/x", None)],
    b"customers": [("GET", "/customers?phone=%2B4930123456", None), ("GET", "/customers/cust1/profile", None),
                   ("PUT", "/customers/cust1/profile", {"name": "Mallory"})],
    b"email": [("POST", "/email", {"conversation": "c_1", "email": "visitor@example.org"})],
    b"webhooks": [("GET", "/webhooks", None), ("GET", "/webhooks/wh_1", None),
                  ("GET", "/webhooks/wh_1/deliveries", None),
                  ("POST", "/webhooks", {"url": "https://hooks.example.com/", "events": ["message.created"]}),
                  ("POST", "/webhooks/wh_1/replay", {"since": 0}), ("PATCH", "/webhooks/wh_1", {"paused": True}),
                  ("DELETE", "/webhooks/wh_1", None)],
}


class AccountRefusalTests(unittest.SynchronousTestCase):
    """The account check itself, and that the Authenticator applies it."""

    def agent(self, **kw: Any) -> Agent:
        return Agent(**{"id": "ann", "login": "ann", "name": "Ann", "role": "admin", **kw})

    def test_reasons(self) -> None:
        """No account: valid; disabled, issued before the revocation (the
        revocation's own second included), or a role the account no longer
        has: refused with the matching reason."""
        p = Principal("ann", "admin", issued_at=1000.0)
        self.assertIsNone(account_refusal(None, p))
        self.assertIsNone(account_refusal(self.agent(), p))
        self.assertIsNone(account_refusal(self.agent(tokens_valid_after=999.5), p))
        cases = [
            (self.agent(disabled=True), p, "account_disabled"),
            (self.agent(tokens_valid_after=1000.4), p, "revoked"),
            (self.agent(tokens_valid_after=5.0), Principal("ann", "admin"), "revoked"),  # no iat
            (self.agent(role="agent"), p, "role_changed"),
        ]
        for agent, principal, reason in cases:
            refusal = account_refusal(agent, principal)
            assert refusal is not None
            self.assertEqual(refusal.reason, reason)

    def test_authenticator_checks_staff_accounts_only(self) -> None:
        """A staff token loads its account (and is refused by it); a customer
        token never touches the account store."""
        looked_up: list[str] = []

        class Accounts:
            def get_agent(self, agent_id: str) -> Any:
                looked_up.append(agent_id)
                return succeed(Agent("ann", "ann", "Ann", "agent", disabled=True))

        class Verifier:
            def verify(self, token: str) -> Principal:
                return Principal(token, "customer" if token.startswith("v") else "agent")

        authn = Authenticator(Verifier(), Accounts())  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(authn.authenticate("v1")).user_id, "v1")
        self.assertEqual(looked_up, [])
        failure = self.failureResultOf(authn.authenticate("ann"), AuthError)
        self.assertEqual((failure.value.reason, looked_up), ("account_disabled", ["ann"]))


class OnePathTests(unittest.TestCase):
    """Over real HTTP and WebSocket, with the SQL store."""

    timeout = 120

    def call(self, method: str, path: str, bearer: str | None = None, body: Any = None) -> Any:
        return self.api.exchange(method, path, bearer, body)

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.api = Api(self.server.port)
        self.boss = token("boss", "admin")  # an integrator's token: no account row, valid
        r, _ = yield self.call("POST", "/teams", self.boss, {"id": "sales", "name": "Sales"})
        self.assertEqual(r.code, 201)
        self.tokens: dict[str, str] = {}
        for login in ("ann", "dis", "rev", "chg"):
            r, body = yield self.call("POST", "/agents", self.boss, {
                "login": login, "password": PASSWORD, "role": "agent" if login == "ann" else "admin",
                "team": "sales"})
            self.assertEqual(r.code, 201, body)
            r, body = yield self.call("POST", "/login", None, {"login": login, "password": PASSWORD})
            self.assertEqual(r.code, 200, body)
            self.tokens[login] = body["access_token"]

    @inlineCallbacks
    def refuse_accounts(self) -> Any:
        """Disable ``dis``; revoke ``rev``'s tokens (disable, enable again);
        make ``chg`` an agent. Returns token -> expected reason."""
        for login, changes in (("dis", [{"disabled": True}]), ("rev", [{"disabled": True}, {"disabled": False}]),
                               ("chg", [{"role": "agent"}])):
            for change in changes:
                r, body = yield self.call("PATCH", f"/agents/{login}", self.boss, change)
                self.assertEqual(r.code, 200, body)
        return {self.tokens["dis"]: "account_disabled", self.tokens["rev"]: "revoked",
                self.tokens["chg"]: "role_changed"}

    @inlineCallbacks
    def test_every_authenticated_route_refuses_a_refused_account(self) -> Any:
        """Walk every route mounted under /api/v1 (a new one fails this test
        until it is listed): with a disabled admin's token, a revoked admin
        token and an admin token whose account became an agent, every method
        answers 401 JSON with WWW-Authenticate, before any effect (the
        customer's data is still exportable afterwards)."""
        v1 = self.server.server.get_root_resource().children[b"api"].children[b"v1"]
        mounted = set(v1.children)
        self.assertEqual(mounted - PUBLIC - set(ROUTES), set(), "a route this test does not walk")
        self.assertEqual(set(ROUTES) - mounted, set())
        cust = yield connect(self.server.port, token("cust1"))
        cust.send({"type": "start", "team": "sales", "ref": "s"})
        yield cust.next_frame("conversation")
        cust.sendClose()
        yield cust.closed
        # Control: before the accounts change, the tokens work.
        for method, path in (("GET", "/admin/customers/cust1/export"), ("GET", "/search?q=hello"),
                             ("GET", "/agents")):
            r, body = yield self.call(method, path, self.tokens["dis"])
            self.assertEqual(r.code, 200, (method, path, body))
        refused = yield self.refuse_accounts()
        for name in sorted(ROUTES):
            for method, path, body in ROUTES[name]:
                for bearer, reason in refused.items():
                    r, answer = yield self.call(method, path, bearer, body)
                    self.assertEqual(r.code, 401, (method, path, reason, answer))
                    self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/json"])
                    self.assertEqual(r.headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])
                    self.assertEqual(answer["error"]["code"], "unauthorized")
                    self.assertNotIn(bearer, json.dumps(answer))
        r, data = yield self.call("GET", "/admin/customers/cust1/export", self.boss)
        self.assertEqual(r.code, 200)
        self.assertEqual(len(data["conversations"]), 1)  # the DELETEs above erased nothing

    @inlineCallbacks
    def test_me_names_the_account_reason(self) -> None:
        """GET /api/v1/me tells the console why: account_disabled, revoked or role_changed."""
        refused = yield self.refuse_accounts()
        for bearer, reason in refused.items():
            r, body = yield self.call("GET", "/me", bearer)
            self.assertEqual((r.code, body["error"]["reason"]), (401, reason))

    @inlineCallbacks
    def test_websocket_handshake_refuses_a_refused_account(self) -> Any:
        """The same three tokens are refused at the WebSocket handshake with
        401 (the workflow's hello-time check is not the only guard); the
        handshake_rejections metric counts each reason; a good staff token
        still connects."""
        refused = yield self.refuse_accounts()
        for bearer, reason in refused.items():
            status, headers, body = yield raw_handshake(self.server.port, headers={"Authorization": f"Bearer {bearer}"})
            self.assertEqual((status, headers["content-type"]), (401, "application/json"), reason)
            self.assertEqual(json.loads(body)["error"]["code"], "unauthorized")
        metrics = self.server.server.get_metrics().handshake_rejections
        for reason in ("account_disabled", "revoked", "role_changed"):
            self.assertEqual(metrics.labels(reason)._value.get(), 1.0, reason)
        ann = yield connect(self.server.port, self.tokens["ann"])
        self.assertEqual(ann.frames[0]["type"], "hello")
        ann.sendClose()
        yield ann.closed

    @inlineCallbacks
    def test_workflow_off_still_checks_accounts(self) -> Any:
        """With [workflow] enabled = false the accounts in the agents table
        still count: a disabled admin's token is refused on REST and at the
        handshake."""
        off = yield start_server(self, workflow={"enabled": False})
        store = off.server.get_workflow_store()
        yield store.create_agent(Agent("dis", "dis", "Dis", "admin", created_at=1.0))
        yield store.update_agent("dis", {"disabled": True}, 2.0)
        bad = token("dis", "admin")
        api = Api(off.port)
        r, _ = yield api.exchange("GET", "/admin/customers/cust1/export", bad)
        self.assertEqual(r.code, 401)
        r, _ = yield api.exchange("GET", "/admin/customers/cust1/export", token("other", "admin"))
        self.assertEqual(r.code, 200)
        status, _, _ = yield raw_handshake(off.port, headers={"Authorization": f"Bearer {bad}"})
        self.assertEqual(status, 401)

    @inlineCallbacks
    def test_a_role_change_closes_open_connections(self) -> Any:
        """An admin makes an admin account an agent while it is connected: its
        WebSocket closes with 1008 at once (it would keep the admin role
        otherwise), and reconnecting with the old token is refused."""
        chg = yield connect(self.server.port, self.tokens["chg"])
        self.assertEqual(chg.frames[0]["agent"]["role"], "admin")
        r, _ = yield self.call("PATCH", "/agents/chg", self.boss, {"role": "agent"})
        self.assertEqual(r.code, 200)
        _, code, reason = yield chg.closed
        self.assertEqual((code, reason), (1008, "role changed; sign in again"))
        status, _, _ = yield raw_handshake(self.server.port, headers={"Authorization": f"Bearer {self.tokens['chg']}"})
        self.assertEqual(status, 401)
