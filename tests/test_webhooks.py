"""Webhooks (issue 17): events from the stored log, signatures, the SSRF
guard, the dispatcher's order, retries, dead events and 410 on a Clock,
and the whole server against a real local HTTP receiver."""

from __future__ import annotations

import json
import os
import random
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from supportchat.background import BackgroundTasks
from supportchat.config import ConfigError, load_config
from supportchat.metrics import Metrics
from supportchat.storage.database import Database, migrate_blocking
from supportchat.storage.engines import SqliteEngine
from supportchat.storage.models import EVENT, TEXT, AppendRequest, Message, customer_key
from supportchat.webhooks.client import (
    DeliveryError, MemoryWebhookClient, Response, SentRequest, TargetRefused, TreqWebhookClient, address_allowed,
    parse_networks,
)
from supportchat.webhooks.dispatcher import WebhookDispatcher
from supportchat.webhooks.events import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header, to_event, verify
from supportchat.webhooks.store import Endpoint, SqlWebhookStore
from tests.support import TIMEOUT, Api, start_server, token

LOOPBACK = parse_networks(["127.0.0.0/8"])


def message(seq: int, kind: str = TEXT, data: dict[str, Any] | None = None, conv: str = "c1",
            ts: float = 1000.0) -> Message:
    return Message(conv, f"m{conv}-{seq}", seq, customer_key("alice"), "customer", None, kind, f"hello {seq}",
                   ts + seq, data)


class EventTests(unittest.TestCase):
    def test_event_is_stable_per_log_entry(self) -> None:
        """The same stored entry always gives the same id and the same body bytes; the body is the
        documented envelope with the message as deliveries carry it."""
        a, b = to_event(message(1)), to_event(message(1))
        assert a is not None and b is not None
        self.assertEqual((a.id, a.body), (b.id, b.body))
        doc = json.loads(a.body)
        self.assertEqual(doc["id"], "evt_mc1-1")
        self.assertEqual(doc["type"], "message.created")
        self.assertEqual(doc["created_at"], 1001.0)
        self.assertEqual(doc["data"]["body"], "hello 1")
        self.assertEqual(doc["data"]["seq"], 1)

    def test_lifecycle_entries_map_to_types(self) -> None:
        """Workflow entries become conversation.* events; entries with no event type (queued) are none."""
        for name, kind in (("created", "conversation.created"), ("joined", "conversation.assigned"),
                           ("assigned", "conversation.assigned"), ("transferred", "conversation.transferred"),
                           ("closed", "conversation.closed"), ("reopened", "conversation.reopened")):
            event = to_event(message(2, EVENT, {"name": name}))
            assert event is not None
            self.assertEqual(event.type, kind)
        self.assertIsNone(to_event(message(2, EVENT, {"name": "queued"})))

    def test_signature_verifies_and_rotation_carries_two(self) -> None:
        """The header is t=...,v1=...; during a rotation both secrets verify; a wrong secret, a changed body
        or an old timestamp do not."""
        body = b'{"id":"evt_1"}'
        header = signature_header(["new-secret", "old-secret"], 1700000000, body)
        self.assertEqual(header.count("v1="), 2)
        self.assertTrue(header.startswith("t=1700000000,v1="))
        self.assertTrue(verify("new-secret", header, body, 1700000010))
        self.assertTrue(verify("old-secret", header, body, 1700000010))
        self.assertFalse(verify("other", header, body, 1700000010))
        self.assertFalse(verify("new-secret", header, body + b" ", 1700000010))
        self.assertFalse(verify("new-secret", header, body, 1700000000 + 301))


class GuardTests(unittest.TestCase):
    def test_addresses(self) -> None:
        """Loopback, private, link-local (metadata), CGNAT, unspecified and mapped loopback are refused;
        public addresses pass; an allowed network lets its addresses through."""
        for refused in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                        "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1"):
            self.assertFalse(address_allowed(refused, []), refused)
        for ok in ("93.184.216.34", "2606:4700::1111"):
            self.assertTrue(address_allowed(ok, []), ok)
        self.assertTrue(address_allowed("127.0.0.1", LOOPBACK))
        self.assertTrue(address_allowed("10.1.2.3", parse_networks(["10.0.0.0/8"])))

    def test_config_is_validated(self) -> None:
        """[webhooks] options are checked before start, errors name the key."""
        cfg = load_config(None, environ={}, overrides={"webhooks": {"allowed_private_networks": ["127.0.0.0/8"]}})
        self.assertEqual(cfg.webhooks.retry_for, 86400.0)
        for bad in ({"allowed_private_networks": ["nonsense"]}, {"retry_min_delay": 0},
                    {"retry_max_delay": 1.0, "retry_min_delay": 5.0}, {"timeout": 0}):
            with self.assertRaises(ConfigError) as e:
                load_config(None, environ={}, overrides={"webhooks": bad})
            self.assertIn("webhooks.", str(e.exception))


class ServiceTreeTests(unittest.TestCase):
    def test_dispatcher_where_messages_reach_sql(self) -> None:
        """The service `webhooks` exists on an embedded node and on a Redis-mode persister, not on a Redis-mode
        gateway, and not where `[webhooks] dispatch` is off."""
        from twisted.internet.testing import MemoryReactorClock

        from supportchat.app.services import build_service
        from supportchat.server import SupportChatServer
        from tests.support import make_config

        def names(roles: tuple[str, ...], **sections: Any) -> set[str]:
            data_dir = self.mktemp()
            os.makedirs(data_dir)
            server = SupportChatServer(MemoryReactorClock(), make_config(data_dir, **sections), roles)
            return {s.name for s in build_service(server)}  # type: ignore[attr-defined]

        redis = {"url": "redis://127.0.0.1:1/0"}
        self.assertIn("webhooks", names(("gateway", "persister", "bot")))
        self.assertIn("webhooks", names(("persister",), redis=redis))
        self.assertNotIn("webhooks", names(("gateway",), redis=redis))
        self.assertNotIn("webhooks", names(("gateway", "persister", "bot"), webhooks={"dispatch": False}))


class Receiver(Resource):
    """A real HTTP receiver: records each request, answers with ``answer(n)`` (status, body)."""

    isLeaf = True

    def __init__(self, answer: Callable[[int], tuple[int, bytes]] = lambda n: (200, b"ok")) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def render_POST(self, request: Any) -> bytes:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, request.content.read()))
        status, body = self.answer(len(self.requests))
        request.setResponseCode(status)
        for n, d in list(self._waiters):
            if len(self.requests) >= n:
                self._waiters.remove((n, d))
                d.callback(None)
        return body

    def wait_for(self, n: int) -> "Deferred[None]":
        from twisted.internet import reactor

        d: Deferred[None] = Deferred()
        if len(self.requests) >= n:
            d.callback(None)
        else:
            self._waiters.append((n, d))
        return d.addTimeout(TIMEOUT, reactor)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


def listen(testcase: unittest.TestCase, receiver: Resource) -> str:
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/hook"


class WebhookClientContract:
    """What every ``WebhookClient`` does; ``make_client(allowed, receiver)`` gives one whose requests reach
    ``receiver`` (an in-process call for the twin, a real local HTTP server for treq)."""

    def make_client(self, allowed: list[Any], receiver: Receiver) -> tuple[Any, str]:
        raise NotImplementedError

    @inlineCallbacks
    def test_post_answers_status_and_excerpt(self) -> Any:
        """A POST reaches the receiver with its headers and body; the answer's status comes back with at most
        a short excerpt of its body."""
        receiver = Receiver(lambda n: (503, b"x" * 5000))
        client, url = self.make_client(LOOPBACK, receiver)
        response = yield client.post(url, {"Supportchat-Event-Id": "evt_1"}, b'{"a":1}')
        self.assertEqual(response.status, 503)  # type: ignore[attr-defined]
        self.assertLessEqual(len(response.excerpt), 512)  # type: ignore[attr-defined]
        self.assertEqual(receiver.requests[0][1], b'{"a":1}')  # type: ignore[attr-defined]
        self.assertEqual(receiver.requests[0][0]["supportchat-event-id"], "evt_1")  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_private_target_refused_without_a_request(self) -> Any:
        """Without an allowed network a loopback target fails with TargetRefused and nothing is sent."""
        receiver = Receiver()
        client, url = self.make_client([], receiver)
        with self.assertRaises(TargetRefused):  # type: ignore[attr-defined]
            yield client.post(url, {}, b"{}")
        self.assertEqual(receiver.requests, [])  # type: ignore[attr-defined]


class MemoryClientTests(WebhookClientContract, unittest.TestCase):
    def make_client(self, allowed: list[Any], receiver: Receiver) -> tuple[Any, str]:
        def answer(request: SentRequest) -> Response:
            receiver.requests.append(({k.lower(): v for k, v in request.headers.items()}, request.body))
            status, body = receiver.answer(len(receiver.requests))
            return Response(status, body[:512].decode(), 0.0)

        return MemoryWebhookClient(answer=answer, allowed=list(allowed)), "http://127.0.0.1:9/hook"


class TreqClientTests(WebhookClientContract, unittest.TestCase):
    timeout = 30

    def make_client(self, allowed: list[Any], receiver: Receiver) -> tuple[Any, str]:
        from twisted.internet import reactor

        return TreqWebhookClient(reactor, allowed, 5.0), listen(self, receiver)

    @inlineCallbacks
    def test_name_resolving_to_loopback_is_refused(self) -> Any:
        """A host name is resolved by the client and its address checked: a name that resolves to loopback is
        refused before any connection (the address connected to is the one checked)."""
        from twisted.internet import reactor

        receiver = Receiver()
        url = listen(self, receiver).replace("127.0.0.1", "hooks.example")
        resolved: list[str] = []

        def resolve(host: str, port: int) -> "Deferred[list[str]]":
            resolved.append(host)
            return defer.succeed(["127.0.0.1"])

        client = TreqWebhookClient(reactor, [], 5.0, resolve=resolve)
        with self.assertRaises(TargetRefused):
            yield client.post(url, {}, b"{}")
        self.assertEqual((resolved, receiver.requests), (["hooks.example"], []))
        allowed = TreqWebhookClient(reactor, LOOPBACK, 5.0, resolve=resolve)
        response = yield allowed.post(url, {}, b"{}")
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_https_certificates_are_verified(self) -> Any:
        """An https receiver whose certificate the client cannot verify gets no request (the attempt fails);
        with its issuer trusted, the same receiver is reached (host name checked against the certificate)."""
        from twisted.internet import reactor
        from twisted.internet.ssl import Certificate, PrivateCertificate

        from tests.test_websocket import self_signed

        directory = self.mktemp()
        os.makedirs(directory)
        key_path, cert_path, pem = self_signed(directory)
        with open(key_path, "rb") as f:
            server_cert = PrivateCertificate.loadPEM(f.read() + pem)
        receiver = Receiver()
        port = reactor.listenSSL(0, Site(receiver), server_cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}/hook"

        def resolve(host: str, port: int) -> "Deferred[list[str]]":
            return defer.succeed(["127.0.0.1"])

        untrusted = TreqWebhookClient(reactor, LOOPBACK, 5.0, resolve=resolve)
        with self.assertRaises(DeliveryError):
            yield untrusted.post(url, {}, b"{}")
        self.assertEqual(receiver.requests, [])
        trusted = TreqWebhookClient(reactor, LOOPBACK, 5.0, resolve=resolve, trust_root=Certificate.loadPEM(pem))
        response = yield trusted.post(url, {}, b'{"ok":1}')
        self.assertEqual((response.status, receiver.requests[0][1]), (200, b'{"ok":1}'))

    @inlineCallbacks
    def test_hanging_receiver_times_out(self) -> Any:
        """A receiver that never answers fails the attempt with DeliveryError after the timeout."""
        from twisted.internet import reactor
        from twisted.web.server import NOT_DONE_YET

        held: list[Any] = []

        class Hang(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                held.append(request)
                return NOT_DONE_YET

        url = listen(self, Hang())
        client = TreqWebhookClient(reactor, LOOPBACK, 0.3)
        with self.assertRaises(DeliveryError):
            yield client.post(url, {}, b"{}")
        for request in held:
            request.transport.abortConnection()


def _endpoint(url: str = "http://127.0.0.1:9/hook", events: tuple[str, ...] = ("message.created",),
              since: float = 0.0) -> Endpoint:
    return Endpoint("wh_1", url, events, "", "secret-1", None, None, False, None, since, 0.0)


def replace_id(endpoint: Endpoint) -> Endpoint:
    from dataclasses import replace

    return replace(endpoint, id="wh_2", url="http://127.0.0.1:9/other")


class DispatcherTests(unittest.TestCase):
    """The dispatcher on a Clock, a threadless SQLite database and the client twin."""

    kind = "sqlite"

    def setUp(self) -> None:
        from tests.dbs import threadless_db

        self.db = threadless_db(self, self.kind)
        self.store = SqlWebhookStore(self.db)
        self.clock = Clock()
        self.clock.advance(5000)
        self.failing: dict[str, int] = {}  # event id -> how many more attempts answer self.status
        self.status = 500
        self.client = MemoryWebhookClient(answer=self.answer, allowed=LOOPBACK)
        self.metrics = Metrics()
        self.background = BackgroundTasks()

    def answer(self, request: SentRequest) -> Response:
        event_id = request.headers[EVENT_ID_HEADER]
        left = self.failing.get(event_id, 0)
        if left:
            self.failing[event_id] = left - 1
            return Response(self.status, "", 0.01)
        return Response(200, "", 0.01)

    def dispatcher(self, **kw: Any) -> WebhookDispatcher:
        kw.setdefault("poll_interval", 1.0)
        d = WebhookDispatcher(self.clock, self.store, self.client, self.metrics, self.background,
                              retry_min_delay=10.0, retry_max_delay=100.0, rng=random.Random(1), **kw)
        d.startService()
        self.addCleanup(self.stop, d)
        return d

    def stop(self, d: WebhookDispatcher) -> None:
        d.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.background.running, 0)

    def log(self, conv: str, *entries: tuple[str, dict[str, Any] | None], last_ts: float = 2000.0) -> None:
        def txn(cur: Any) -> None:
            cur.execute("INSERT INTO conversations (id, customer_id, status, created_at, last_seq, last_ts) "
                        "VALUES (?, ?, 'open', 1000, ?, ?)", (conv, customer_key("alice"), len(entries), last_ts))
            for seq, (kind, data) in enumerate(entries, 1):
                cur.execute("INSERT INTO messages (msg_id, conversation_id, seq, sender_id, sender_role, kind, "
                            "body, data, ts) VALUES (?, ?, ?, 'c:alice', 'customer', ?, 'hi', ?, ?)",
                            (f"{conv}-{seq}", conv, seq, kind, None if data is None else json.dumps(data),
                             1000.0 + seq))
        self.successResultOf(self.db.run_interaction("log", txn))

    def ids(self) -> list[str]:
        return [json.loads(r.body)["id"] for r in self.client.sent]

    def attempts(self) -> list[tuple[str, int, str]]:
        rows = self.successResultOf(self.store.attempts("wh_1", 100))
        return [(a.event_id, a.attempt, a.outcome) for a in reversed(rows)]

    def test_retries_in_order_with_the_same_body(self) -> None:
        """A 500 is retried with backoff; the later events of that conversation wait; each retry has the same
        id and body and a fresh signature; another conversation is not held up; the attempts are listed."""
        self.successResultOf(self.store.add(_endpoint()))
        self.log("a", (TEXT, None), (EVENT, {"name": "queued"}), (TEXT, None))
        self.log("b", (TEXT, None))
        self.failing = {"evt_a-1": 2}
        self.dispatcher()
        self.clock.advance(0)
        first = self.ids()
        self.assertIn("evt_a-1", first)
        self.assertIn("evt_b-1", first)
        self.assertNotIn("evt_a-3", first)
        for _ in range(40):
            self.clock.advance(5)
        self.assertEqual([i for i in self.ids() if i.startswith("evt_a")], ["evt_a-1"] * 3 + ["evt_a-3"])
        bodies = {r.body for r in self.client.sent if json.loads(r.body)["id"] == "evt_a-1"}
        self.assertEqual(len(bodies), 1)
        for r in self.client.sent:
            self.assertTrue(verify("secret-1", r.headers[SIGNATURE_HEADER], r.body, self.clock.seconds(), 3600))
        a = [x for x in self.attempts() if x[0].startswith("evt_a")]
        self.assertEqual(a, [("evt_a-1", 1, "failed"), ("evt_a-1", 2, "failed"), ("evt_a-1", 3, "delivered"),
                             ("evt_a-3", 1, "delivered")])
        self.clock.advance(5)
        self.assertEqual(len(self.client.sent), 5)  # nothing is sent twice once delivered

    def test_dead_after_retry_for_then_replay(self) -> None:
        """Past retry_for the event is dead (listed, counted), the next one goes; a replay sends both again
        with their original ids."""
        self.successResultOf(self.store.add(_endpoint()))
        self.log("a", (TEXT, None), (TEXT, None))
        self.failing = {"evt_a-1": 10**6}
        self.dispatcher(retry_for=30.0)
        for _ in range(60):
            self.clock.advance(5)
        outcomes = self.attempts()
        self.assertEqual(outcomes[-2:], [("evt_a-1", outcomes[-2][1], "dead"), ("evt_a-2", 1, "delivered")])
        self.assertEqual(self.metrics.webhook_deliveries.labels("wh_1", "dead")._value.get(), 1)
        sent = len(self.client.sent)
        self.assertEqual(self.successResultOf(self.store.replay("wh_1", "evt_a-1")), 1001.0)
        self.clock.advance(1)
        self.assertEqual(self.ids()[sent:], ["evt_a-2"])
        self.failing = {}  # the receiver is fixed
        self.successResultOf(self.store.replay("wh_1", 1000.0))
        self.clock.advance(1)
        self.assertEqual(self.ids()[sent + 1:], ["evt_a-1", "evt_a-2"])

    def test_gone_pauses_the_endpoint(self) -> None:
        """410 Gone pauses the endpoint: nothing more is sent until an admin resumes it; then the same event
        goes again."""
        self.successResultOf(self.store.add(_endpoint()))
        self.log("a", (TEXT, None), (TEXT, None))
        self.failing, self.status = {"evt_a-1": 1}, 410
        self.dispatcher()
        for _ in range(10):
            self.clock.advance(20)
        self.assertEqual(self.ids(), ["evt_a-1"])
        endpoint = self.successResultOf(self.store.get("wh_1"))
        self.assertEqual((endpoint.paused, endpoint.paused_reason), (True, "gone"))
        from dataclasses import replace

        self.successResultOf(self.store.update(replace(endpoint, paused=False, paused_reason=None)))
        self.clock.advance(1)
        self.assertEqual(self.ids(), ["evt_a-1", "evt_a-1", "evt_a-2"])

    def test_subscription_and_registration_time(self) -> None:
        """Only subscribed types go out, and only entries stored since the endpoint's registration."""
        self.successResultOf(self.store.add(_endpoint(events=("conversation.closed",), since=1001.5)))
        self.log("a", (EVENT, {"name": "closed"}), (TEXT, None), (EVENT, {"name": "closed"}))
        self.dispatcher()
        self.clock.advance(0)
        self.assertEqual(self.ids(), ["evt_a-3"])
        self.assertEqual(json.loads(self.client.sent[0].body)["type"], "conversation.closed")

    def test_notes_and_ratings_from_the_outbox(self) -> None:
        """A note and a rating are written with their event in the same transaction; an endpoint subscribed
        to them gets each once, with the body stored at the time (retried with the same bytes, a later event
        of the conversation held back meanwhile); one not subscribed gets none; a replay resends them."""
        from supportchat.webhooks.store import SqlOutbox
        from supportchat.workflow.store import SqlWorkflowStore

        self.successResultOf(self.store.add(_endpoint(events=("note.created", "conversation.rated"),
                                                      since=4000.0)))
        self.successResultOf(self.store.add(replace_id(_endpoint(events=("message.created",), since=4000.0))))
        wf = SqlWorkflowStore(self.db)
        self.log("a", (TEXT, None))
        self.successResultOf(wf.add_note("a", "ann", "VIP customer", 5000.0, 1))

        def closed(cur: Any) -> None:
            cur.execute("INSERT INTO work_items (conversation_id, customer_id, team_id, state, queued_at) "
                        "VALUES ('a', 'c:alice', '', 'closed', 1000)")
        self.successResultOf(self.db.run_interaction("closed", closed))
        self.assertTrue(self.successResultOf(wf.rate("a", 5, "great", 5001.0)))
        self.client.hosts = {}
        first_note: list[bytes] = []
        original = self.answer

        def answer(request: SentRequest) -> Response:
            doc = json.loads(request.body)
            if doc["type"] == "note.created" and len(first_note) < 2:
                first_note.append(request.body)
                return Response(500, "", 0.01)
            return original(request)

        self.client.answer = answer
        self.dispatcher(outbox=SqlOutbox(self.db))
        self.clock.advance(0)
        sent = [json.loads(r.body) for r in self.client.sent if "note" in r.body.decode() or "rating" in r.body.decode()]
        self.assertEqual([d["type"] for d in sent], ["note.created"])  # the rating waits for the note
        for _ in range(20):
            self.clock.advance(10)
        outbox_sent = [r for r in self.client.sent if json.loads(r.body)["type"] in ("note.created",
                                                                                    "conversation.rated")]
        types = [json.loads(r.body)["type"] for r in outbox_sent]
        self.assertEqual(types, ["note.created"] * 3 + ["conversation.rated"])
        self.assertEqual(len({r.body for r in outbox_sent[:3]}), 1)
        note = json.loads(outbox_sent[0].body)
        self.assertEqual((note["data"]["body"], note["data"]["conversation"], note["created_at"]),
                         ("VIP customer", "a", 5000.0))
        self.assertEqual(json.loads(outbox_sent[3].body)["data"]["rating"], 5)
        self.assertFalse([r for r in self.client.sent if r.url.endswith("/other")
                          and json.loads(r.body)["type"] != "message.created"])
        self.successResultOf(self.store.replay("wh_1", 4999.0))
        self.clock.advance(1)
        again = [json.loads(r.body)["id"] for r in self.client.sent[len(self.client.sent) - 2:]]
        self.assertEqual(again, [note["id"], json.loads(outbox_sent[3].body)["id"]])

    def test_customer_updated_and_erased(self) -> None:
        """A profile change emits customer.updated (never the encrypted sensitive fields), the same profile
        stored again emits nothing; erasing the customer removes the undelivered customer.updated events and
        emits customer.erased once everything is gone."""
        from supportchat.storage.history import SqlHistoryStore, repeat_batches
        from supportchat.webhooks.store import SqlOutbox
        from supportchat.workflow.profiles import SqlProfileStore, StoredProfile

        self.successResultOf(self.store.add(_endpoint(events=("customer.updated", "customer.erased"), since=10.0)))
        profiles = SqlProfileStore(self.db)
        profile = StoredProfile("alice", "Alice", "alice@example.com", {"plan": "gold"}, {"phone": "v1:secret"},
                                None, 100.0)
        self.successResultOf(profiles.put(profile))
        from dataclasses import replace

        # Unchanged (the sensitive value re-encrypted, its blind index the same):
        self.successResultOf(profiles.put(replace(profile, sensitive={"phone": "v1:other"}, updated_at=101.0)))
        self.successResultOf(profiles.put(replace(profile, name="Alice B.", updated_at=102.0)))
        self.dispatcher(outbox=SqlOutbox(self.db))
        self.clock.advance(0)
        docs = [json.loads(r.body) for r in self.client.sent]
        self.assertEqual([(d["type"], d["data"]["name"]) for d in docs],
                         [("customer.updated", "Alice"), ("customer.updated", "Alice B.")])
        self.assertNotIn("secret", b"".join(r.body for r in self.client.sent).decode())
        self.assertEqual(docs[0]["data"]["customer"], {"id": "alice"})
        self.successResultOf(profiles.put(replace(profile, name="Alice C.", updated_at=103.0)))
        history = SqlHistoryStore(self.db)
        self.successResultOf(repeat_batches(lambda: history.erase_customer_batch(customer_key("alice"), 10, 200.0)))
        self.clock.advance(1)
        docs = [json.loads(r.body) for r in self.client.sent]
        self.assertEqual([d["type"] for d in docs[2:]], ["customer.erased"])
        self.assertEqual((docs[2]["data"], docs[2]["created_at"]), ({"customer": {"id": "alice"}}, 200.0))

    def test_late_entries_are_found_by_the_sweep(self) -> None:
        """Rounds look at recently active conversations (an index range, not every conversation ever); an
        entry that reaches SQL with an old time (a persister's backlog) is delivered by the next full sweep;
        a replay reaches old conversations at once."""
        from supportchat.webhooks.dispatcher import SWEEP

        self.successResultOf(self.store.add(_endpoint()))
        self.dispatcher()
        self.clock.advance(0)  # the first round is a full sweep: nothing yet
        self.log("old", (TEXT, None))  # last_ts 2000, the clock is past 5000
        self.clock.advance(1)
        self.assertEqual(self.ids(), [])
        for _ in range(int(SWEEP)):
            self.clock.advance(1)
        self.assertEqual(self.ids(), ["evt_old-1"])
        self.successResultOf(self.store.replay("wh_1", 0.0))
        self.clock.advance(1)
        self.assertEqual(self.ids(), ["evt_old-1", "evt_old-1"])

    def test_a_published_message_wakes_the_dispatcher(self) -> None:
        """On the embedded node a message delivery on the bus brings the next round within WAKE_DELAY instead
        of poll_interval; with no endpoint registered deliveries change nothing; stopping unsubscribes."""
        from supportchat.bus.interfaces import Delivery
        from supportchat.bus.memory import LocalBus
        from supportchat.webhooks.dispatcher import WAKE_DELAY

        bus = LocalBus()
        d = self.dispatcher(bus=bus, poll_interval=30.0)
        self.clock.advance(0)
        bus.publish(Delivery(frame={"type": "message"}))
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds() + 30.0)  # no endpoint: no wake-up
        self.successResultOf(self.store.add(_endpoint()))
        d.poke()
        self.clock.advance(0)
        self.log("a", (TEXT, None), last_ts=self.clock.seconds())
        bus.publish(Delivery(frame={"type": "message"}))
        self.clock.advance(WAKE_DELAY)
        self.assertEqual(self.ids(), ["evt_a-1"])
        self.assertEqual(len(bus._subscribers), 1)
        d.stopService()
        self.assertEqual(bus._subscribers, [])

    def test_old_attempts_are_purged(self) -> None:
        """Delivery attempts older than 30 days are removed by the dispatcher's hourly purge; recent ones stay."""
        from supportchat.webhooks.store import Attempt

        self.clock.advance(60 * 86400)
        now = self.clock.seconds()
        self.successResultOf(self.store.add(_endpoint()))
        for i, ts in enumerate((now - 31 * 86400, now - 29 * 86400)):
            self.successResultOf(self.store.record(Attempt(f"a{i}", "wh_1", "evt_x", "message.created", "a", 1, 1,
                                                           ts, "delivered")))
        self.dispatcher()
        self.clock.advance(0)
        self.assertEqual([a.id for a in self.successResultOf(self.store.attempts("wh_1", 10))], ["a1"])

    def test_deleted_endpoint_leaves_no_rows(self) -> None:
        """A delivery that settles after its endpoint was deleted writes no cursor or attempt."""
        from supportchat.webhooks.store import Attempt

        self.successResultOf(self.store.add(_endpoint()))
        self.successResultOf(self.store.delete("wh_1"))
        attempt = Attempt("a1", "wh_1", "evt_a-1", "message.created", "a", 1, 1, 1.0, "delivered")
        self.successResultOf(self.store.advance("wh_1", "a", 1, attempt))

        def count(cur: Any) -> int:
            cur.execute("SELECT (SELECT COUNT(*) FROM webhook_cursors) + (SELECT COUNT(*) FROM webhook_deliveries)")
            return int(cur.fetchone()[0])
        self.assertEqual(self.successResultOf(self.db.run_interaction("count", count)), 0)

    def test_admin_change_keeps_the_dispatchers_pause(self) -> None:
        """An admin's change read before a 410 paused the endpoint does not resume it (only `paused` does)."""
        from dataclasses import replace

        self.successResultOf(self.store.add(_endpoint()))
        read = self.successResultOf(self.store.get("wh_1"))
        self.successResultOf(self.store.pause("wh_1", "gone"))
        self.successResultOf(self.store.update(replace(read, description="CRM"), pause=False))
        now = self.successResultOf(self.store.get("wh_1"))
        self.assertEqual((now.description, now.paused, now.paused_reason), ("CRM", True, "gone"))

    def test_backoff_grows_with_jitter_up_to_max(self) -> None:
        """The wait doubles from retry_min_delay, lies between half and all of it, and stops at the maximum."""
        d = WebhookDispatcher(self.clock, self.store, self.client, self.metrics, self.background,
                              retry_min_delay=10.0, retry_max_delay=100.0, rng=random.Random(3))
        for n, base in ((1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 100.0), (30, 100.0)):
            wait = d.backoff(n)
            self.assertTrue(base / 2 <= wait <= base, (n, wait))


class PostgresDispatcherTests(DispatcherTests):
    """The same on PostgreSQL (the store's SQL on that engine)."""

    kind = "postgresql"


class MariadbDispatcherTests(DispatcherTests):
    """The same on MariaDB."""

    kind = "mariadb"


def until(check: Callable[[], Any], tries: int = 300) -> "Deferred[Any]":
    """Ask the running server until ``check`` (a Deferred-returning call) gives a true value."""
    from twisted.internet import reactor

    @inlineCallbacks
    def loop() -> Any:
        for _ in range(tries):
            value = yield check()
            if value:
                return value
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("condition never held")

    return loop()


class WebhookServerBase(unittest.TestCase):
    """The whole server (embedded mode, SQLite, real pool) delivering to a real local HTTP receiver."""

    timeout = 60
    allowed = ["127.0.0.0/8"]

    def sections(self) -> dict[str, Any]:
        return {"webhooks": {"allowed_private_networks": self.allowed, "poll_interval": 0.02,
                             "retry_min_delay": 0.05, "retry_max_delay": 0.2, "timeout": 1.0}}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.running = yield start_server(self, **self.sections())
        if self.running.server.redis_mode:
            yield self.running.server.get_redis().connected_once
        self.api = Api(self.running.port)
        self.admin = token("root", "admin")
        self.server = self.running.server

    @inlineCallbacks
    def register(self, url: str, events: list[str] | None = None) -> Any:
        code, body = yield self.api.call("POST", "/webhooks", self.admin,
                                         {"url": url, "events": events or ["message.created"]})
        self.assertEqual(code, 201, body)
        return body

    @inlineCallbacks
    def say(self, conversation: str, n: int, customer: str = "alice") -> Any:
        writer = self.server.get_writer()
        for i in range(1, n + 1):
            yield writer.write(AppendRequest(
                conversation_id=conversation, sender_id=customer_key(customer), sender_role="customer", kind=TEXT,
                body=f"message {i}", ts=self.server.reactor.seconds(), client_msg_id=f"{conversation}-{i}"))

    @inlineCallbacks
    def conversation(self, customer: str = "alice") -> Any:
        conv, _ = yield self.server.get_store().open_conversation(customer_key(customer),
                                                                  self.server.reactor.seconds())
        return conv.id


class WebhookServerTests(WebhookServerBase):
    @inlineCallbacks
    def test_retry_after_500_same_id_valid_signatures_in_order(self) -> Any:
        """A receiver that answers 500 three times then 200 gets the first event four times with the same id
        and body and a valid signature each time; the later events follow in seq order; the deliveries list
        shows each attempt."""
        receiver = Receiver(lambda n: (500, b"boom") if n <= 3 else (200, b"ok"))
        hook = yield self.register(listen(self, receiver))
        conv = yield self.conversation()
        yield self.say(conv, 3)
        yield receiver.wait_for(6)
        events = receiver.events()
        self.assertEqual([e["data"]["seq"] for e in events], [1, 1, 1, 1, 2, 3])
        self.assertEqual(len({body for _, body in receiver.requests[:4]}), 1)
        import time

        for headers, body in receiver.requests:
            self.assertTrue(verify(hook["secret"], headers["supportchat-signature"], body, time.time()))
            self.assertEqual(headers["supportchat-event-id"], json.loads(body)["id"])
        code, page = yield self.api.call("GET", f"/webhooks/{hook['id']}/deliveries", self.admin)
        self.assertEqual(code, 200)
        first = [d for d in page["deliveries"] if d["seq"] == 1]
        self.assertEqual(sorted((d["attempt"], d["outcome"], d["status_code"]) for d in first),
                         [(1, "failed", 500), (2, "failed", 500), (3, "failed", 500), (4, "delivered", 200)])
        self.assertEqual(first[-1]["response_excerpt"], "boom")

    @inlineCallbacks
    def test_gone_pauses_and_replay_after_rotation(self) -> Any:
        """410 pauses the endpoint (visible in GET); resuming sends the event again; after a rotation the
        header carries two v1 (new and old secret) and a replay resends with the original ids."""
        answers = [410]
        receiver = Receiver(lambda n: (answers.pop(0), b"") if answers else (204, b""))
        hook = yield self.register(listen(self, receiver))
        conv = yield self.conversation()
        yield self.say(conv, 2)
        yield receiver.wait_for(1)
        path = f"/webhooks/{hook['id']}"
        yield until(lambda: self.api.call("GET", path, self.admin).addCallback(lambda r: r[1]["paused"]))
        code, body = yield self.api.call("GET", path, self.admin)
        self.assertEqual(body["paused_reason"], "gone")
        self.assertNotIn("secret", body)
        code, body = yield self.api.call("PATCH", path, self.admin, {"paused": False})
        self.assertEqual((code, body["paused"]), (200, False))
        yield receiver.wait_for(3)
        ids = [e["id"] for e in receiver.events()]
        self.assertEqual(ids[0], ids[1])
        code, rotated = yield self.api.call("PATCH", path, self.admin, {"rotate_secret": True, "grace_period": 600})
        self.assertEqual(code, 200)
        self.assertNotEqual(rotated["secret"], hook["secret"])
        code, body = yield self.api.call("POST", path + "/replay", self.admin, {"since": ids[1]})
        self.assertEqual(code, 202, body)
        yield receiver.wait_for(4)
        headers, raw = receiver.requests[3]
        self.assertEqual(json.loads(raw)["id"], ids[2])
        self.assertEqual(headers["supportchat-signature"].count("v1="), 2)
        import time

        self.assertTrue(verify(rotated["secret"], headers["supportchat-signature"], raw, time.time()))
        self.assertTrue(verify(hook["secret"], headers["supportchat-signature"], raw, time.time()))
        code, body = yield self.api.call("POST", path + "/replay", self.admin, {"since": 0})
        yield receiver.wait_for(6)
        self.assertEqual([e["id"] for e in receiver.events()[4:6]], ids[1:3])

    @inlineCallbacks
    def test_note_from_the_outbox(self) -> Any:
        """An internal note (written with its event in one transaction) reaches an endpoint subscribed to
        note.created, signed; an endpoint subscribed to messages only never sees it."""
        notes = Receiver()
        messages = Receiver()
        hook = yield self.register(listen(self, notes), ["note.created"])
        yield self.register(listen(self, messages), ["message.created"])
        conv = yield self.conversation()
        yield self.server.get_workflow_store().add_note(conv, "ann", "VIP, be quick", self.server.reactor.seconds(), 0)
        yield self.say(conv, 1)
        yield notes.wait_for(1)
        yield messages.wait_for(1)
        headers, body = notes.requests[0]
        doc = json.loads(body)
        self.assertEqual((doc["type"], doc["data"]["body"], doc["data"]["conversation"]),
                         ("note.created", "VIP, be quick", conv))
        import time

        self.assertTrue(verify(hook["secret"], headers["supportchat-signature"], body, time.time()))
        self.assertEqual([e["type"] for e in messages.events()], ["message.created"])

    @inlineCallbacks
    def test_hanging_receiver_does_not_block_others(self) -> Any:
        """An endpoint whose receiver never answers times out and is retried, while another endpoint gets
        every event at once; the timeouts are listed as failed attempts."""
        from twisted.web.server import NOT_DONE_YET

        held: list[Any] = []

        class Hang(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                held.append(request)
                return NOT_DONE_YET

        hanging = yield self.register(listen(self, Hang()))
        receiver = Receiver()
        yield self.register(listen(self, receiver))
        conv = yield self.conversation()
        yield self.say(conv, 3)
        yield receiver.wait_for(3)
        self.assertEqual([e["data"]["seq"] for e in receiver.events()], [1, 2, 3])
        code, page = yield self.api.call("GET", f"/webhooks/{hanging['id']}/deliveries", self.admin)
        self.assertEqual(page["deliveries"], [])  # its first request is still waiting for an answer

        def two_failures() -> "Deferred[Any]":
            d = self.api.call("GET", f"/webhooks/{hanging['id']}/deliveries", self.admin)
            return d.addCallback(lambda r: len(r[1]["deliveries"]) >= 2 and r[1]["deliveries"])

        attempts = yield until(two_failures, tries=1000)
        self.assertEqual({(a["seq"], a["outcome"], a["status_code"]) for a in attempts}, {(1, "failed", None)})
        self.assertTrue(all(a["error"] for a in attempts))

    @inlineCallbacks
    def test_only_admins(self) -> Any:
        """Agents and customers get 403, no token 401; listing never shows a secret; DELETE removes."""
        hook = yield self.register("https://hooks.example.com/in")
        for bearer in (token("ann", "agent"), token("alice")):
            code, _ = yield self.api.call("GET", "/webhooks", bearer)
            self.assertEqual(code, 403)
            code, _ = yield self.api.call("POST", "/webhooks", bearer, {"url": "https://x.example", "events": []})
            self.assertEqual(code, 403)
        code, _ = yield self.api.call("GET", "/webhooks")
        self.assertEqual(code, 401)
        code, body = yield self.api.call("GET", "/webhooks", self.admin)
        self.assertEqual([w["id"] for w in body["webhooks"]], [hook["id"]])
        self.assertNotIn(hook["secret"], json.dumps(body))
        code, body = yield self.api.call("POST", "/webhooks", self.admin,
                                         {"url": "https://x.example", "events": ["nope"]})
        self.assertEqual(code, 400)
        code, _ = yield self.api.call("DELETE", f"/webhooks/{hook['id']}", self.admin)
        self.assertEqual(code, 200)
        code, _ = yield self.api.call("GET", f"/webhooks/{hook['id']}", self.admin)
        self.assertEqual(code, 404)


class RedisModeWebhookTests(WebhookServerTests):
    """The same with Redis in between: messages go to the stream, the persister flushes them to SQL, and the
    dispatcher (on the persister's node) delivers from there."""

    def sections(self) -> dict[str, Any]:
        from tests import redis_support

        if redis_support.REDIS_SKIP:
            raise unittest.SkipTest(redis_support.REDIS_SKIP)
        url = redis_support.shared().url
        return dict(super().sections(), redis={"url": url, "prefix": f"wh{os.getpid()}{id(self)}:"})


class WebhookGuardServerTests(WebhookServerBase):
    """The same server with no allowed network: private targets are refused."""

    allowed: list[str] = []

    @inlineCallbacks
    def test_private_target_refused(self) -> Any:
        """Registering a loopback or metadata URL is refused (400); an endpoint whose target is private when
        delivering (stored before the rule, or a name that resolves there) gets no request: its attempts are
        listed as refused."""
        for url in ("http://127.0.0.1:8080/in", "http://169.254.169.254/latest", "http://localhost/x"):
            code, body = yield self.api.call("POST", "/webhooks", self.admin, {"url": url,
                                                                              "events": ["message.created"]})
            self.assertEqual(code, 400, url)
        receiver = Receiver()
        url = listen(self, receiver)
        now = self.server.reactor.seconds()
        yield self.server.get_webhook_store().add(Endpoint("wh_private", url, ("message.created",), "", "s", None,
                                                           None, False, None, now, now))
        conv = yield self.conversation()
        yield self.say(conv, 1)
        rows = yield until(lambda: self.server.get_webhook_store().attempts("wh_private", 10))
        self.assertEqual(rows[0].outcome, "refused")
        self.assertEqual(receiver.requests, [])


class HoldingReceiver(Receiver):
    """Answers 200 to the first ``answered`` requests, then holds every request unanswered (a receiver
    that hangs) until ``release`` is set."""

    def __init__(self, answered: int) -> None:
        super().__init__()
        self.answered = answered
        self.release = False
        self.acked: list[str] = []  # event ids answered 200

    def render_POST(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        body = super().render_POST(request)
        if self.release or len(self.requests) <= self.answered:
            self.acked.append(json.loads(self.requests[-1][1])["id"])
            return body
        return NOT_DONE_YET


class KillTests(unittest.TestCase):
    """A real ``twistd`` node killed with SIGKILL while deliveries are in flight."""

    timeout = 120

    @inlineCallbacks
    def test_kill_9_with_200_pending_loses_none(self) -> Any:
        """200 events over four conversations; the receiver answers 40 then hangs; the node is killed -9 with
        requests in flight; after a restart all 200 arrive, each conversation's in seq order (a repeat only of
        an event that was in flight), and no event the receiver had acknowledged is sent again."""
        import sqlite3

        from tests.support import ServerProcess, free_port

        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "supportchat.db")
        migrate_blocking(SqliteEngine(path))
        receiver = HoldingReceiver(40)
        url = listen(self, receiver)
        db = Database(SqliteEngine(path), reactor=None, threadless=True)
        db.start()

        def txn(cur: Any) -> None:
            for c in range(4):
                cur.execute("INSERT INTO conversations (id, customer_id, status, created_at, last_seq, last_ts) "
                            "VALUES (?, 'c:alice', 'open', 1000, 50, 1100)", (f"conv{c}",))
                for seq in range(1, 51):
                    cur.execute("INSERT INTO messages (msg_id, conversation_id, seq, sender_id, sender_role, kind, "
                                "body, ts) VALUES (?, ?, ?, 'c:alice', 'customer', 'text', 'hi', ?)",
                                (f"m{c}-{seq}", f"conv{c}", seq, 1000.0 + seq))

        self.successResultOf(db.run_interaction("seed", txn))
        self.successResultOf(SqlWebhookStore(db).add(Endpoint(
            "wh_k", url, ("message.created",), "", "s", None, None, False, None, 0.0, 0.0)))
        db.close()
        env = {"SUPPORTCHAT_WEBHOOKS_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
               "SUPPORTCHAT_WEBHOOKS_POLL_INTERVAL": "0.05", "SUPPORTCHAT_WEBHOOKS_RETRY_MIN_DELAY": "0.1",
               "SUPPORTCHAT_WEBHOOKS_RETRY_MAX_DELAY": "0.2", "SUPPORTCHAT_WEBHOOKS_TIMEOUT": "30"}
        node = ServerProcess(data_dir, free_port(), env)
        self.addCleanup(node.kill)
        yield node.start()
        yield receiver.wait_for(44)  # 40 answered, 4 conversations' next events held

        def committed() -> "Deferred[bool]":
            with sqlite3.connect(path) as conn:
                (n,) = conn.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE outcome = 'delivered'").fetchone()
            return defer.succeed(n == 40)

        yield until(committed)
        before = {json.loads(body)["id"] for _, body in receiver.requests}
        acked = set(receiver.acked)
        node.signal("KILL")
        yield node.ended()
        sent_before = len(receiver.requests)
        receiver.release = True
        again = ServerProcess(data_dir, node.port, env)
        self.addCleanup(again.kill)
        yield again.start()

        def all_arrived() -> "Deferred[bool]":
            return defer.succeed(len({e["id"] for e in receiver.events()}) == 200)

        yield until(all_arrived, tries=1500)
        after = [e["id"] for e in receiver.events()[sent_before:]]
        self.assertEqual(acked & set(after), set())
        for c in range(4):
            seqs = [e["data"]["seq"] for e in receiver.events() if e["data"]["conversation"] == f"conv{c}"]
            self.assertEqual(seqs, sorted(seqs), f"conv{c} out of order")
            self.assertEqual(sorted(set(seqs)), list(range(1, 51)))
        repeated = [i for i in after if i in before]
        self.assertLessEqual(len(repeated), 4)
