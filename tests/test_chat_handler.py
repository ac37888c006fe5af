"""The chat handler on in-memory twins and a fake clock: routing,
authorization, acks, fan-out, sync, typing, read, errors."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.bus.memory import LocalBus
from supportchat.config import ChatConfig
from supportchat.handlers.assemble import build_router
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.metrics import Metrics
from supportchat.storage.memory import MemoryConversationStore, MemoryPresenceStore
from supportchat.storage.models import customer_key
from supportchat.wire.frames import FrameError, parse_frame


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed: tuple[int, str] | None = None

    def send_text(self, payload: str) -> None:
        try:
            self.sent.append(json.loads(payload))
        except ValueError:
            self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if isinstance(f, dict) and f.get("type") == kind]

    def texts(self) -> list[dict[str, Any]]:
        return [f for f in self.of_type("message") if f["kind"] == "text"]

    def last(self) -> Any:
        return self.sent[-1]


class HandlerTestCase(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryConversationStore()
        self.bus = LocalBus()
        self.presence = MemoryPresenceStore(self.clock, 35)
        self.metrics = Metrics()
        self.registry = ConnectionRegistry(on_change=self.metrics.connections.set)
        self.background = BackgroundTasks()
        self.handler = build_router(
            clock=self.clock, store=self.store, bus=self.bus, presence=self.presence,
            registry=self.registry, metrics=self.metrics, background=self.background,
            config=ChatConfig(frame_rate=5, frame_burst=10), heartbeat=30,
        )

    def tearDown(self) -> None:
        self.assertEqual(self.background.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(self, user: str, role: str = "customer", name: str | None = None) -> tuple[ClientSession, FakeTransport]:
        t = FakeTransport()
        s = ClientSession(Principal(user, role, name), t)
        self.successResultOf(self.handler.on_open(s))
        return s, t

    def send(self, session: ClientSession, frame: dict[str, Any]) -> None:
        parsed = parse_frame(json.dumps(frame), 4000, 500)
        self.successResultOf(self.handler.on_frame(session, parsed))

    def start(self, session: ClientSession, transport: FakeTransport) -> str:
        self.send(session, {"type": "start", "ref": "s"})
        return str(transport.of_type("conversation")[-1]["conversation"]["id"])

    def chat(self) -> tuple[Any, Any, Any, Any, str]:
        cust, ct = self.connect("cust")
        agent, at = self.connect("agent", "agent", name="Ann")
        conv = self.start(cust, ct)
        self.send(agent, {"type": "accept", "ref": 1, "conversation": conv})
        return cust, ct, agent, at, conv


class LifecycleTests(HandlerTestCase):
    def test_hello_lists_conversations_with_session_state(self) -> None:
        """hello is the first frame and carries id, status, last seq/msg/time and unread."""
        cust, ct, agent, at, conv = self.chat()
        self.send(agent, {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "a1", "body": "hello"})
        again, t2 = self.connect("cust")
        hello = t2.sent[0]
        self.assertEqual(hello["type"], "hello")
        self.assertEqual(hello["user"], {"id": "cust", "role": "customer"})
        self.assertEqual(hello["heartbeat"], 30)
        [entry] = hello["conversations"]
        ack = at.of_type("ack")[-1]
        self.assertEqual(entry["id"], conv)
        self.assertEqual(entry["status"], "open")
        self.assertEqual(entry["last_seq"], ack["seq"])
        self.assertEqual(entry["last_msg_id"], ack["msg_id"])
        self.assertEqual(entry["last_ts"], ack["ts"])
        self.assertEqual(entry["unread"], 1)

    def test_frames_are_held_until_hello(self) -> None:
        """A delivery that arrives while hello is being built comes after hello."""
        cust, ct, agent, at, conv = self.chat()
        t = FakeTransport()
        s = ClientSession(Principal("cust", "customer"), t)
        slow: Deferred[Any] = Deferred()
        real = self.store.get_states
        self.store.get_states = lambda user: slow  # type: ignore[method-assign]
        d = self.handler.on_open(s)
        self.send(agent, {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "a1", "body": "x"})
        self.assertEqual(t.sent, [])
        real("cust").chainDeferred(slow)
        self.successResultOf(d)
        self.assertEqual([f["type"] for f in t.sent], ["hello", "message"])

    def test_agents_get_the_queue_in_hello_and_new_conversations_live(self) -> None:
        """Agents see unassigned conversations in hello and are told of new ones."""
        cust, ct = self.connect("cust")
        conv = self.start(cust, ct)
        agent, at = self.connect("agent", "agent")
        self.assertEqual([c["id"] for c in at.sent[0]["queue"]], [conv])
        other, ot = self.connect("cust2")
        conv2 = self.start(other, ot)
        self.assertEqual(at.of_type("conversation")[-1]["conversation"]["id"], conv2)
        self.assertEqual(ct.of_type("conversation")[-1]["conversation"]["id"], conv)  # not told of others'

    def test_presence_follows_connections_and_heartbeats(self) -> None:
        """Opening marks online, silence past the TTL makes offline, closing removes at once."""
        s, t = self.connect("cust")
        self.assertTrue(self.successResultOf(self.presence.is_online(customer_key("cust"))))
        self.clock.advance(36)
        self.assertFalse(self.successResultOf(self.presence.is_online(customer_key("cust"))))
        self.handler.on_heartbeat(s)
        self.assertTrue(self.successResultOf(self.presence.is_online(customer_key("cust"))))
        self.handler.on_close(s)
        self.assertFalse(self.successResultOf(self.presence.is_online(customer_key("cust"))))
        self.assertEqual(len(self.registry), 0)


class MessageTests(HandlerTestCase):
    def test_message_is_acked_and_delivered_to_everyone_else(self) -> None:
        """The sender gets an ack; every other connection of every participant,
        the sender's other devices included, gets the message once."""
        cust, ct, agent, at, conv = self.chat()
        cust_phone, pt = self.connect("cust")
        delivered_before = self.metrics.messages_delivered._value.get()
        self.send(cust, {"type": "message", "ref": 7, "conversation": conv, "client_msg_id": "k1", "body": "help"})
        ack = ct.last()
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(ack["ref"], 7)
        self.assertEqual(ack["client_msg_id"], "k1")
        self.assertEqual(ack["seq"], 2)  # 1 was the join event
        for t in (at, pt):
            msg = t.of_type("message")[-1]
            self.assertEqual(msg["msg_id"], ack["msg_id"])
            self.assertEqual(msg["seq"], 2)
            self.assertEqual(msg["body"], "help")
            self.assertEqual(msg["kind"], "text")
            self.assertEqual(msg["sender"], {"id": "cust", "role": "customer"})
        self.assertEqual([m["kind"] for m in ct.of_type("message")], ["event"])  # the join only
        self.assertEqual(self.metrics.messages_delivered._value.get() - delivered_before, 2)

    def test_join_event_reaches_customer(self) -> None:
        """Accepting is a sequenced event the customer sees live."""
        cust, ct, agent, at, conv = self.chat()
        [event] = ct.of_type("message")
        self.assertEqual(event["kind"], "event")
        self.assertEqual(event["seq"], 1)
        self.assertEqual(event["event"]["name"], "joined")
        self.assertEqual(event["event"]["user"]["id"], "agent")
        reply = at.of_type("conversation")[-1]
        self.assertEqual(reply["ref"], 1)
        self.send(agent, {"type": "accept", "ref": 2, "conversation": conv})
        self.assertEqual(len(ct.of_type("message")), 1)  # accepting twice adds nothing
        self.assertEqual(at.of_type("conversation")[-1]["ref"], 2)

    def test_duplicate_gets_the_original_ack_and_no_delivery(self) -> None:
        """A repeated client_msg_id, also from another connection, is acked identically and not delivered again."""
        cust, ct, agent, at, conv = self.chat()
        frame = {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "k1", "body": "once"}
        self.send(cust, frame)
        first = ct.last()
        self.handler.on_close(cust)
        again, t2 = self.connect("cust")
        self.send(again, dict(frame, ref=2))
        second = t2.last()
        for key in ("msg_id", "seq", "ts", "client_msg_id", "conversation"):
            self.assertEqual(first[key], second[key])
        self.assertEqual(len(at.texts()), 1)
        self.assertEqual(len(self.successResultOf(self.store.get_messages(conv, 0, 100))), 2)

    def test_customer_cannot_touch_another_customers_conversation(self) -> None:
        """Every frame on someone else's conversation gets not_found, exactly as for a missing one."""
        cust, ct, agent, at, conv = self.chat()
        mallory, mt = self.connect("mallory")
        frames = [
            {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "x", "body": "hi"},
            {"type": "sync", "ref": 2, "conversation": conv},
            {"type": "typing", "ref": 3, "conversation": conv},
            {"type": "read", "ref": 4, "conversation": conv, "seq": 1},
        ]
        for frame in frames:
            self.send(mallory, frame)
            theirs = mt.last()
            self.send(mallory, dict(frame, conversation="c-does-not-exist"))
            missing = mt.last()
            self.assertEqual(theirs["type"], "error")
            self.assertEqual(theirs["code"], "not_found")
            self.assertEqual(theirs["ref"], frame["ref"])
            self.assertEqual({k: v for k, v in theirs.items()}, missing)
        self.send(mallory, {"type": "accept", "ref": 9, "conversation": conv})
        self.assertEqual(mt.last()["code"], "forbidden")
        self.assertEqual(len(self.successResultOf(self.store.get_messages(conv, 0, 100))), 1)
        self.assertEqual(len(ct.of_type("typing")), 0)

    def test_agent_only_in_joined_conversations_admin_reads_any(self) -> None:
        """An agent who has not joined gets not_found; an admin may sync any conversation."""
        cust, ct, agent, at, conv = self.chat()
        other, ot = self.connect("agent2", "agent")
        self.send(other, {"type": "sync", "ref": 1, "conversation": conv})
        self.assertEqual(ot.last()["code"], "not_found")
        admin, adt = self.connect("root", "admin")
        self.send(admin, {"type": "sync", "ref": 1, "conversation": conv})
        self.assertEqual(adt.last()["type"], "history")
        self.send(cust, {"type": "start", "ref": 2})
        self.send(agent, {"type": "start", "ref": 3})
        self.assertEqual(at.last()["code"], "forbidden")

    def test_store_failure_is_unavailable_and_not_acked(self) -> None:
        """If the commit fails the sender gets 'unavailable' (retry), never an ack."""
        cust, ct, agent, at, conv = self.chat()
        self.store.append = lambda req: fail(RuntimeError("disk full"))  # type: ignore[method-assign]
        self.send(cust, {"type": "message", "ref": 5, "conversation": conv, "client_msg_id": "k", "body": "x"})
        err = ct.last()
        self.assertEqual((err["type"], err["code"], err["ref"]), ("error", "unavailable", 5))
        self.assertEqual(ct.of_type("ack"), [])
        self.assertEqual(at.texts(), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SyncTypingReadTests(HandlerTestCase):
    def test_sync_returns_missed_messages_in_order_with_paging(self) -> None:
        """A reconnecting participant gets exactly what follows after_seq, in pages."""
        cust, ct, agent, at, conv = self.chat()
        self.handler.on_close(cust)
        for i in range(5):
            self.send(agent, {"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"a{i}", "body": f"m{i}"})
        back, bt = self.connect("cust")
        self.send(back, {"type": "sync", "ref": "p1", "conversation": conv, "after_seq": 1, "limit": 3})
        page = bt.last()
        self.assertEqual(page["type"], "history")
        self.assertEqual(page["ref"], "p1")
        self.assertEqual([m["seq"] for m in page["messages"]], [2, 3, 4])
        self.assertTrue(page["has_more"])
        self.send(back, {"type": "sync", "ref": "p2", "conversation": conv, "after_seq": 4, "limit": 3})
        page = bt.last()
        self.assertEqual([m["body"] for m in page["messages"]], ["m3", "m4"])
        self.assertFalse(page["has_more"])

    def test_typing_goes_to_the_others_only(self) -> None:
        """Typing reaches the other participants, not the typist."""
        cust, ct, agent, at, conv = self.chat()
        self.send(cust, {"type": "typing", "conversation": conv})
        self.assertEqual(at.of_type("typing"), [{"type": "typing", "conversation": conv, "user_id": "cust"}])
        self.assertEqual(ct.of_type("typing"), [])

    def test_read_updates_unread_and_tells_the_others(self) -> None:
        """read sets the reader's unread count and notifies other participants."""
        cust, ct, agent, at, conv = self.chat()
        for i in range(3):
            self.send(agent, {"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"a{i}", "body": "x"})
        self.send(cust, {"type": "read", "ref": "r", "conversation": conv, "seq": 2})
        reply = ct.last()
        self.assertEqual((reply["type"], reply["ref"], reply["unread"], reply["seq"]), ("read", "r", 2, 2))
        self.assertEqual(at.of_type("read")[-1], {"type": "read", "conversation": conv, "user_id": "cust", "seq": 2})
        self.assertEqual(self.successResultOf(self.store.get_states(customer_key("cust")))[0].unread, 2)


class FrameErrorTests(HandlerTestCase):
    def test_bad_frames_get_errors_and_the_session_stays_usable(self) -> None:
        """A refused frame becomes an error frame with its ref; the next good frame works."""
        s, t = self.connect("cust")
        for text in ["{nope", "[]", '{"type":"bogus","ref":3}', '{"type":"message","ref":4}']:
            try:
                parse_frame(text, 4000, 500)
            except FrameError as e:
                self.handler.on_bad_frame(s, e)
        codes = [(f["code"], f.get("ref")) for f in t.of_type("error")]
        self.assertEqual(codes, [("bad_request", None), ("bad_request", None), ("bad_request", 3), ("bad_request", 4)])
        self.send(s, {"type": "ping", "ref": 9})
        self.assertEqual(t.last(), {"type": "pong", "ref": 9})

    def test_workflow_frames_are_refused_when_the_workflow_is_off(self) -> None:
        """Without the workflow its frames (status, take, transfer, close, rate)
        are not served: a clear bad_request naming the frame, nothing changes,
        and ``accept`` still joins."""
        cust, ct, agent, at, conv = self.chat()
        frames = [
            {"type": "status", "status": "online"},
            {"type": "take", "conversation": conv},
            {"type": "transfer", "conversation": conv, "to_team": "x"},
            {"type": "close", "conversation": conv},
            {"type": "rate", "conversation": conv, "rating": 5},
        ]
        for i, frame in enumerate(frames):
            self.send(agent if frame["type"] != "rate" else cust, dict(frame, ref=f"w{i}"))
        errors = at.of_type("error") + ct.of_type("error")
        self.assertEqual(sorted(e["ref"] for e in errors), [f"w{i}" for i in range(5)])
        self.assertEqual({e["code"] for e in errors}, {"bad_request"})
        self.assertIn("not enabled", errors[0]["message"])
        self.assertEqual(len(self.successResultOf(self.store.get_messages(conv, 0, 100))), 1)  # the join only

    def test_plain_ping_gets_plain_pong(self) -> None:
        """A text frame 'ping' is answered 'pong'."""
        s, t = self.connect("cust")
        self.successResultOf(self.handler.on_frame(s, parse_frame("ping", 10, 10)))
        self.assertEqual(t.last(), "pong")

    def test_frame_flood_is_rate_limited_then_recovers(self) -> None:
        """Past the burst, frames get rate_limited; after a pause they work again."""
        s, t = self.connect("cust")
        for i in range(12):
            self.send(s, {"type": "start", "ref": i})
        limited = [f for f in t.of_type("error") if f["code"] == "rate_limited"]
        self.assertEqual([f["ref"] for f in limited], [10, 11])
        self.clock.advance(1)
        self.send(s, {"type": "start", "ref": "ok"})
        self.assertEqual(t.last()["type"], "conversation")
