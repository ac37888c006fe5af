"""The first-line bot: matching in English and Chinese, the dialogue rules
(greeting, FAQ, flows with slots, every handoff path, business hours), the
versioned state store contract (memory, SQL engines, Redis), the node on
in-memory twins (live delivery, redelivery, silence once an agent joins,
resuming decided replies), the HTTP adapter (StubTreq and a real local
server that errors or times out) and the embedded server end to end."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web import resource, server

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.bot.engine import (
    AFTER_HOURS, CUSTOMER_REQUEST, FLOW, FLOW_INVALID, NO_ANSWER, Dialogue, ExternalAnswer,
)
from supportchat.hours import BusinessHours
from supportchat.bot.http import SIGNATURE_HEADER, TIMESTAMP_HEADER, HttpExternalBot, sign
from supportchat.bot.knowledge import KnowledgeError, load_knowledge, parse_knowledge
from supportchat.bot.node import BotNode, LocalBotFeed, message_from_wire
from supportchat.bot.state import BotState, MemoryBotStateStore, Reply, SqlBotStateStore
from supportchat.bus.memory import LocalBus
from supportchat.config import ChatConfig
from supportchat.config.model import BotConfig
from supportchat.handlers.assemble import build_router
from supportchat.handlers.writer import MessageWriter
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.metrics import Metrics
from supportchat.storage.memory import MemoryConversationStore, MemoryPresenceStore
from tests.redis_support import REDIS_SKIP
from supportchat.storage.models import EVENT, TEXT, AppendRequest, Message, customer_key
from supportchat.wire.frames import parse_frame
from tests.dbs import threadless_db
from tests.support import ask_bot, close_client, connect, is_chat, start_server, token
from tests.test_chat_handler import FakeTransport

KNOWLEDGE = load_knowledge()
THRESHOLD = 72.0

# (question, expected entry): unseen paraphrases, typos and word-order changes.
ENGLISH = [
    ("whne are you opne?", "hours"), ("What time do you open on weekdays", "hours"), ("opening hours", "hours"),
    ("how can I get my money back", "refund"), ("refnd polcy", "refund"), ("I'd like to return this item", "refund"),
    ("how long does delivery take", "shipping"), ("shiping cost?", "shipping"), ("when will my parcel arrive", "shipping"),
    ("forgot my pasword", "password"), ("I can't log in", "password"), ("how to reset my password", "password"),
    ("where's my order??", "order_status"), ("trak my ordr", "order_status"), ("Order Status", "order_status"),
    ("I want to complain", "complaint"), ("talk to a humna", "@handoff"), ("agent please", "@handoff"),
    ("human", "@handoff"), ("thanks, that helped!", "@resolved"),
]
CHINESE = [
    ("你们几点上班？", "hours"), ("营业时间是什么", "hours"), ("客服什么时间在线", "hours"),
    ("请问怎么退款", "refund"), ("我要退货", "refund"), ("退款怎么弄", "refund"),
    ("运费是多少", "shipping"), ("多久到货", "shipping"), ("发货需要几天", "shipping"),
    ("忘了密码", "password"), ("密码忘记了怎么办", "password"), ("我登录不上", "password"),
    ("我的订单到哪了", "order_status"), ("帮我查一下订单", "order_status"), ("查询订单状态", "order_status"),
    ("我要投诉你们", "complaint"), ("转人工", "@handoff"), ("人工服务", "@handoff"), ("找个人工客服", "@handoff"),
    ("谢谢，解决了", "@resolved"),
]
UNKNOWN = ["what is the meaning of life", "do you sell bicycles", "asdfgh", "my cat is sick", "tell me a joke",
           "今天天气怎么样", "你喜欢吃什么", "股票会涨吗"]


def dialogue(max_misses: int = 2) -> Dialogue:
    return Dialogue(KNOWLEDGE, THRESHOLD, max_misses)


class MatchingTests(unittest.SynchronousTestCase):
    def accuracy(self, cases: list[tuple[str, str]]) -> tuple[float, list[Any]]:
        d = dialogue()
        wrong = []
        for question, expected in cases:
            m = d.classify(question)
            if m is None or m.key != expected:
                wrong.append((question, expected, m))
        return 1 - len(wrong) / len(cases), wrong

    def test_english_typos_and_paraphrases(self) -> None:
        """Every English test question (typos, paraphrases) finds its entry above the threshold."""
        accuracy, wrong = self.accuracy(ENGLISH)
        self.assertEqual(wrong, [], f"accuracy {accuracy:.0%}")

    def test_chinese_paraphrases(self) -> None:
        """Every Chinese test question (no word splitting, reordered characters) finds its entry."""
        accuracy, wrong = self.accuracy(CHINESE)
        self.assertEqual(wrong, [], f"accuracy {accuracy:.0%}")

    def test_unknown_questions_stay_below_threshold(self) -> None:
        """Off-topic questions in both languages match nothing (the bot does not guess)."""
        d = dialogue()
        self.assertEqual([(q, d.classify(q)) for q in UNKNOWN if d.classify(q) is not None], [])

    def test_knowledge_errors_name_the_entry(self) -> None:
        """A malformed knowledge file is refused with the entry and the reason."""
        with self.assertRaises(KnowledgeError) as e:
            parse_knowledge({"faq": [{"id": "x", "questions": [], "answer": "a"}]}, "k.toml")
        self.assertIn("faq[0].questions", str(e.exception))
        with self.assertRaises(KnowledgeError) as e:
            parse_knowledge({"flows": [{"id": "f", "questions": ["q"], "done": "d",
                                        "slots": [{"name": "n", "prompt": "p", "pattern": "("}]}]}, "k.toml")
        self.assertIn("pattern", str(e.exception))
        self.assertRaises(KnowledgeError, load_knowledge, "/nonexistent/bot.toml")


def say(d: Dialogue, state: BotState, text: str, seq: int, open_now: bool = True,
        external: ExternalAnswer | None = None) -> Any:
    return d.step(state, text, seq, f"m{seq}", 1000.0 + seq, open_now, d.classify(text), external)


def texts(outcome: Any) -> list[str]:
    return [r.body for r in outcome.replies if r.kind == TEXT]


class DialogueTests(unittest.SynchronousTestCase):
    def test_greeting_then_faq_answer_in_the_question_language(self) -> None:
        """The first message gets the greeting (with quick replies) and the answer; Chinese gets Chinese."""
        d = dialogue()
        out = say(d, BotState("c"), "when are you open?", 2)
        self.assertEqual(out.replies[0].body, KNOWLEDGE.greeting.get("en"))
        self.assertEqual(out.replies[0].data["quick_replies"][2],
                         {"label": "Talk to a human", "text": "human", "i18n": {"zh": {"label": "转人工", "text": "人工"}}})
        self.assertIn("Monday to Friday", out.replies[1].body)
        self.assertEqual(out.answered, "hours")
        out2 = say(d, out.state, "怎么退款", 4)
        self.assertEqual(len(out2.replies), 1)
        self.assertIn("30 天", out2.replies[0].body)
        self.assertEqual(out2.state.version, 2)

    def test_flow_with_slot_validation(self) -> None:
        """Order status asks for the number, re-asks on a bad format, then answers with it."""
        d = dialogue()
        s = replace(BotState("c"), greeted=True)
        out = say(d, s, "where is my order", 2)
        self.assertIn("order number", texts(out)[0])
        self.assertEqual((out.state.mode, out.state.flow, out.state.slot), ("flow", "order_status", 0))
        out = say(d, out.state, "12345", 4)
        self.assertIn("doesn't look like", texts(out)[0])
        self.assertEqual(out.state.attempts, 1)
        out = say(d, out.state, " b654321 ", 6)
        self.assertEqual(texts(out), ["Order b654321 has shipped and should arrive within 3 business days."])
        self.assertEqual((out.state.mode, out.state.slots), ("bot", {"order": "b654321"}))
        self.assertEqual(out.answered, "order_status")

    def test_flow_in_chinese(self) -> None:
        """A flow started in Chinese prompts and answers in Chinese."""
        d = dialogue()
        s = replace(BotState("c"), greeted=True)
        out = say(d, s, "查物流", 2)
        self.assertIn("订单号", texts(out)[0])
        out = say(d, out.state, "A123456", 4)
        self.assertIn("订单 A123456 已发货", texts(out)[0])

    def test_handoff_on_request_word_and_button(self) -> None:
        """"human", 人工 and the quick-reply button each hand off with reason customer_request."""
        d = dialogue()
        for text in ("human", "转人工", "I want to talk to a human agent", "Talk to a human"):
            out = say(d, replace(BotState("c"), greeted=True), text, 2)
            self.assertEqual(out.handoff, CUSTOMER_REQUEST, text)
            event = [r for r in out.replies if r.kind == EVENT][0]
            self.assertEqual(event.data["name"], "handoff")
            self.assertEqual(event.data["transcript"], {"from_seq": 1, "to_seq": 2})
            self.assertEqual(out.state.mode, "handed_off")

    def test_handoff_after_n_unanswered(self) -> None:
        """After max_misses messages without a confident answer the bot hands off."""
        d = dialogue(max_misses=2)
        out = say(d, replace(BotState("c"), greeted=True), "do you sell bicycles", 2)
        self.assertIsNone(out.handoff)
        self.assertEqual(texts(out), [KNOWLEDGE.fallback.get("en")])
        out = say(d, out.state, "my cat is sick", 4)
        self.assertEqual(out.handoff, NO_ANSWER)

    def test_handoff_requested_by_a_flow(self) -> None:
        """The complaint flow collects its slot, confirms and hands off (reason flow)."""
        d = dialogue()
        out = say(d, replace(BotState("c"), greeted=True), "I want to make a complaint", 2)
        out = say(d, out.state, "The parcel arrived broken", 4)
        self.assertEqual(out.handoff, FLOW)
        self.assertIn("The parcel arrived broken", texts(out)[0])

    def test_handoff_after_invalid_slot_attempts(self) -> None:
        """Three wrong order numbers hand off (reason flow_invalid)."""
        d = dialogue()
        out = say(d, replace(BotState("c"), greeted=True), "track my order", 2)
        for seq in (4, 6):
            out = say(d, out.state, "no idea", seq)
            self.assertIsNone(out.handoff)
        out = say(d, out.state, "still no idea", 8)
        self.assertEqual(out.handoff, FLOW_INVALID)

    def test_silent_after_handoff(self) -> None:
        """Once handed off the bot answers nothing more."""
        d = dialogue()
        out = say(d, replace(BotState("c"), greeted=True), "human", 2)
        out = say(d, out.state, "hello?", 4)
        self.assertEqual(out.replies, ())

    def test_outside_business_hours_offers_to_leave_a_message(self) -> None:
        """Closed: a handoff request says so; the next message is kept and queued (reason after_hours)."""
        d = dialogue()
        out = say(d, replace(BotState("c"), greeted=True), "human", 2, open_now=False)
        self.assertIsNone(out.handoff)
        self.assertEqual(texts(out), [KNOWLEDGE.after_hours.get("en")])
        out = say(d, out.state, "Please call me back about order A123456", 4, open_now=False)
        self.assertEqual(out.handoff, AFTER_HOURS)
        self.assertEqual(texts(out), [KNOWLEDGE.message_left.get("en")])

    def test_business_hours(self) -> None:
        """Rules are weekdays and times in the configured zone; empty means always open."""
        hours = BusinessHours(["mon-fri 09:00-18:00"], "UTC")
        monday_10 = 1_700_470_800.0  # 2023-11-20 09:00 UTC is a Monday
        self.assertTrue(hours.is_open(monday_10 + 3600))
        self.assertFalse(hours.is_open(monday_10 - 60))
        self.assertFalse(hours.is_open(monday_10 + 5 * 86400 + 3600))  # Saturday
        self.assertTrue(BusinessHours([]).is_open(0))
        self.assertRaises(ValueError, BusinessHours, ["weekdays 9-5"])

    def test_external_answer_is_used_when_nothing_matches(self) -> None:
        """An external service's answer replaces the fallback; its handoff flag hands off."""
        d = dialogue()
        s = replace(BotState("c"), greeted=True)
        out = say(d, s, "do you sell bicycles", 2, external=ExternalAnswer("Yes, in store.", ()))
        self.assertEqual((texts(out), out.answered), (["Yes, in store."], "external"))
        out = say(d, s, "do you sell bicycles", 2, external=ExternalAnswer(None, (), True))
        self.assertEqual(out.handoff, "external")


class BotStateStoreContract:
    """Load/save with compare-and-set on the version."""

    def make_store(self) -> Any:
        raise NotImplementedError

    @inlineCallbacks
    def test_versioned_save(self) -> Any:
        """Version N is stored only over N-1; a stale writer is refused and changes nothing."""
        store = yield self.make_store()
        self.assertIsNone((yield store.load("c1")))
        first = BotState("c1").next(mode="flow", flow="order_status", slots={"a": "订单"},
                                    outbox=(Reply(TEXT, "hi", {"quick_replies": [{"label": "l", "text": "t"}]}),))
        self.assertTrue((yield store.save(first)))
        self.assertFalse((yield store.save(first)), "two writers of version 1")
        loaded = yield store.load("c1")
        self.assertEqual(loaded, first)
        second = loaded.next(slot=1)
        stale = loaded.next(slot=5)
        self.assertTrue((yield store.save(second)))
        self.assertFalse((yield store.save(stale)))
        self.assertEqual((yield store.load("c1")).slot, 1)
        self.assertFalse((yield store.save(second.next().next())), "skipping a version")
        self.assertIsNone((yield store.load("c2")))


class MemoryBotStateTests(BotStateStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryBotStateStore()


class _SqlBotState(BotStateStoreContract):
    kind = "sqlite"

    def make_store(self) -> Any:
        db = threadless_db(self, self.kind)
        d = db.run_interaction("clean", lambda cur: cur.execute("DELETE FROM bot_states"))
        return d.addCallback(lambda _: SqlBotStateStore(db))


class SqliteBotStateTests(_SqlBotState, unittest.TestCase):
    kind = "sqlite"


class PostgresBotStateTests(_SqlBotState, unittest.TestCase):
    kind = "postgresql"


class MariadbBotStateTests(_SqlBotState, unittest.TestCase):
    kind = "mysql"


class RedisBotStateTests(BotStateStoreContract, unittest.TestCase):
    skip = REDIS_SKIP

    @inlineCallbacks
    def setUp(self) -> Any:
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("FLUSHALL")
        self.redis = yield connected_client(self, server.url)

    def make_store(self) -> Any:
        from supportchat.bot.state import RedisBotStateStore

        return RedisBotStateStore(self.redis, "sc:")


class FlakyStates(MemoryBotStateStore):
    """A state store where another node advances the state right after our load."""

    def __init__(self) -> None:
        super().__init__()
        self.interfere = 0

    def load(self, conversation_id: str) -> "Deferred[BotState | None]":
        d = super().load(conversation_id)
        if self.interfere:
            self.interfere -= 1
            row = self._rows.get(conversation_id)
            state = BotState(conversation_id) if row is None else BotState.from_json(row[1], row[0])
            mine = super().load(conversation_id)
            self.save(state.next(greeted=True, misses=state.misses))
            return mine
        return d


class NodeTests(unittest.TestCase):
    """The bot node on the in-memory twins, with the real chat handler."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryConversationStore()
        self.bus = LocalBus()
        self.metrics = Metrics()
        self.background = BackgroundTasks()
        self.registry = ConnectionRegistry()
        self.handler = build_router(
            clock=self.clock, store=self.store, bus=self.bus, presence=MemoryPresenceStore(self.clock, 35),
            registry=self.registry, metrics=self.metrics, background=self.background,
            config=ChatConfig(), heartbeat=30,
        )
        self.states = MemoryBotStateStore()
        self.node = self.make_node(self.states)
        self.feed = LocalBotFeed(self.node, self.bus, self.background, messages=True)
        self.feed.start()

    def make_node(self, states: Any, external: Any = None, business_hours: list[str] | None = None) -> BotNode:
        writer = MessageWriter(self.clock, self.store, self.bus, self.metrics)
        return BotNode(self.clock, self.store, writer, states, dialogue(), BusinessHours(business_hours or []),
                       self.metrics, BotConfig(), external)

    def tearDown(self) -> None:
        self.feed.stop()
        self.assertEqual(self.background.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(self, user: str, role: str = "customer") -> tuple[ClientSession, FakeTransport]:
        t = FakeTransport()
        s = ClientSession(Principal(user, role, None), t)
        self.successResultOf(self.handler.on_open(s))
        return s, t

    def send(self, session: ClientSession, frame: dict[str, Any]) -> None:
        self.successResultOf(self.handler.on_frame(session, parse_frame(json.dumps(frame), 4000, 500)))

    def start(self) -> tuple[ClientSession, FakeTransport, str]:
        return self.start_as("cust")

    def start_as(self, user: str) -> tuple[ClientSession, FakeTransport, str]:
        s, t = self.connect(user)
        self.send(s, {"type": "start", "ref": "s"})
        return s, t, str(t.of_type("conversation")[-1]["conversation"]["id"])

    def bot_messages(self, t: FakeTransport) -> list[dict[str, Any]]:
        return [f for f in t.of_type("message") if f["sender"]["role"] == "bot"]

    def test_greeting_and_answers_arrive_live_with_seq(self) -> None:
        """A new conversation is greeted; a question is answered live, in seq order, and counts as unread."""
        s, t, conv = self.start()
        [greeting] = self.bot_messages(t)
        self.assertEqual((greeting["seq"], greeting["sender"]["id"], greeting["client_msg_id"]),
                         (1, "bot", f"bot:greet:{conv}"))
        self.assertIn("quick_replies", greeting["event"])
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "refund policy?"})
        answer = self.bot_messages(t)[-1]
        self.assertEqual(answer["seq"], 3)
        self.assertIn("30 days", answer["body"])
        msgs = self.successResultOf(self.store.get_messages(conv, 0, 10))
        self.assertEqual([(m.seq, m.sender_role) for m in msgs], [(1, "bot"), (2, "customer"), (3, "bot")])
        [state] = self.successResultOf(self.store.get_states(customer_key("cust")))
        self.assertEqual(state.unread, 1)  # the answer after the customer's own message
        self.assertGreater(self.metrics.bot_reply_latency.collect()[0].samples[-1].value, 0)

    def test_created_event_from_the_stream_greets_once(self) -> None:
        """The workflow's created event, as a bot node reads it from the stream (where
        nothing is lost, unlike the pub/sub conversation frame), greets; seen again, or
        too old, nothing more."""
        self.feed.stop()  # no conversation frame reaches the bot
        s, t, conv = self.start()
        self.assertEqual(self.bot_messages(t), [])
        created = self.successResultOf(self.store.append(AppendRequest(
            conversation_id=conv, sender_id="workflow", sender_role="system", kind=EVENT, body="created",
            ts=self.clock.seconds(), data={"name": "created"}, require_participant=False,
            client_msg_id=f"workflow:created:{conv}")))
        for _ in range(2):
            self.successResultOf(self.node.handle(created.message))
        greetings = [m for m in self.successResultOf(self.store.get_messages(conv, 0, 10)) if m.sender_role == "bot"]
        self.assertEqual([m.client_msg_id for m in greetings], [f"bot:greet:{conv}"])
        _, _, other = self.start_as("cust2")
        old = self.successResultOf(self.store.append(AppendRequest(
            conversation_id=other, sender_id="workflow", sender_role="system", kind=EVENT, body="created",
            ts=self.clock.seconds() - 3600, data={"name": "created"}, require_participant=False)))
        self.successResultOf(self.node.handle(old.message))
        self.assertEqual([m for m in self.successResultOf(self.store.get_messages(other, 0, 10))
                          if m.sender_role == "bot"], [])

    def test_redelivery_produces_no_second_answer(self) -> None:
        """The same committed message handled again (stream redelivery) adds nothing."""
        s, t, conv = self.start()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        msg = self.successResultOf(self.store.get_messages(conv, 1, 1))[0]
        for _ in range(3):
            self.successResultOf(self.node.handle(msg))
        msgs = self.successResultOf(self.store.get_messages(conv, 0, 10))
        self.assertEqual(len(msgs), 3)

    def test_decided_replies_are_appended_after_a_crash(self) -> None:
        """State saved but the node died before appending: the next node appends exactly those replies."""
        s, t, conv = self.start()
        self.feed.stop()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "where is my order"})
        msg = self.successResultOf(self.store.get_messages(conv, 1, 1))[0]
        state = self.successResultOf(self.states.load(conv))
        out = self.node.dialogue.step(state, msg.body, msg.seq, msg.msg_id, self.clock.seconds(), True,
                                      self.node.dialogue.classify(msg.body))
        self.assertTrue(self.successResultOf(self.states.save(replace(out.state, outbox=out.replies))))
        successor = self.make_node(self.states)
        self.successResultOf(successor.handle(msg))
        self.successResultOf(successor.handle(msg))
        stored = [m for m in self.successResultOf(self.store.get_messages(conv, 0, 10)) if m.sender_role == "bot"]
        self.assertEqual(len(stored), 2)  # the greeting and the one decided reply
        self.assertIn("order number", stored[-1].body)
        # Redelivered frames repeat the same msg_id and seq (clients keep one).
        self.assertEqual({m["msg_id"] for m in self.bot_messages(t)}, {m.msg_id for m in stored})
        self.feed.start()

    def test_state_conflict_reloads_instead_of_double_advancing(self) -> None:
        """When another node saves first, this node reloads and decides from the newer state."""
        states = FlakyStates()
        self.feed.stop()
        self.feed = LocalBotFeed(self.make_node(states), self.bus, self.background, messages=True)
        self.feed.start()
        s, t, conv = self.start()
        states.interfere = 1
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        final = self.successResultOf(states.load(conv))
        self.assertEqual(final.version, 3)  # greeting, the other node, then ours on top
        self.assertEqual(len([m for m in self.bot_messages(t) if "Monday" in m["body"]]), 1)

    def test_silent_once_an_agent_joined(self) -> None:
        """After an agent accepts, the bot answers nothing."""
        s, t, conv = self.start()
        agent, at = self.connect("ag", "agent")
        self.send(agent, {"type": "accept", "ref": "a", "conversation": conv})
        before = len(self.bot_messages(t))
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        self.assertEqual(len(self.bot_messages(t)), before)

    def test_stream_entries_it_cannot_answer_are_skipped_undecoded(self) -> None:
        """may_answer (the stream consumer's filter on the entry's c/r/k
        fields) lets through customers' texts of conversations without a
        human and the system's events; it turns away staff and bot messages,
        other events, and the texts of a conversation an agent holds once
        the node has seen that. Entries without the fields always pass."""
        s, t, conv = self.start()
        self.assertTrue(self.node.may_answer(conv, "customer", "text"))
        self.assertTrue(self.node.may_answer(conv, "system", "event"))
        self.assertFalse(self.node.may_answer(conv, "agent", "text"))
        self.assertFalse(self.node.may_answer(conv, "bot", "text"))
        self.assertFalse(self.node.may_answer(conv, "customer", "event"))
        agent, at = self.connect("ag", "agent")
        self.send(agent, {"type": "accept", "ref": "a", "conversation": conv})
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        self.assertFalse(self.node.may_answer(conv, "customer", "text"))
        self.assertTrue(self.node.may_answer("other", "customer", "text"))
        self.assertTrue(self.node.may_answer(None, None, None))

    def test_handoff_event_reaches_participants_and_metrics(self) -> None:
        """Asking for a human posts the handoff event with the transcript range; counted by reason."""
        s, t, conv = self.start()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "人工"})
        event = [m for m in self.bot_messages(t) if m["kind"] == "event"][-1]
        self.assertEqual(event["event"]["reason"], "customer_request")
        self.assertEqual(self.metrics.bot_handoffs.labels("customer_request")._value.get(), 1)
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q2", "body": "hello?"})
        self.assertEqual(self.bot_messages(t)[-1]["kind"], "event")

    def test_handoff_calls_the_workflow_seam_again_on_redelivery(self) -> None:
        """The handoff hook (the workflow queues the conversation) runs after the event is appended,
        and again when the message is redelivered (the seam is idempotent), never for other replies."""
        calls: list[str] = []

        async def hook(conversation_id: str) -> None:
            calls.append(conversation_id)

        writer = MessageWriter(self.clock, self.store, self.bus, self.metrics)
        node = BotNode(self.clock, self.store, writer, self.states, dialogue(), BusinessHours([]), self.metrics,
                       BotConfig(), on_handoff=hook)
        self.feed.stop()
        self.feed = LocalBotFeed(node, self.bus, self.background, messages=True)
        self.feed.start()
        s, t, conv = self.start()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        self.assertEqual(calls, [])
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q2", "body": "human"})
        self.assertEqual(calls, [conv])
        msg = [m for m in self.successResultOf(self.store.get_messages(conv, 0, 20)) if m.sender_role == "customer"][-1]
        self.successResultOf(node.handle(msg))
        self.assertEqual(calls, [conv, conv])

    def test_resolved_counts_once(self) -> None:
        """A customer confirming the answer helped is counted as resolved without handoff."""
        s, t, conv = self.start()
        for i, text in enumerate(["opening hours", "that solved it"]):
            self.send(s, {"type": "message", "conversation": conv, "client_msg_id": f"q{i}", "body": text})
        self.assertEqual(self.metrics.bot_resolved._value.get(), 1)

    def test_external_failure_falls_back_to_local(self) -> None:
        """An external service that fails leaves the local fallback answer."""
        class Failing:
            def ask(self, context: dict[str, Any]) -> "Deferred[Any]":
                self.context = context
                return succeed(None)

        ext = Failing()
        self.feed.stop()
        self.feed = LocalBotFeed(self.make_node(self.states, ext), self.bus, self.background, messages=True)
        self.feed.start()
        s, t, conv = self.start()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "do you sell bicycles"})
        self.assertEqual(self.bot_messages(t)[-1]["body"], KNOWLEDGE.fallback.get("en"))
        self.assertEqual(ext.context["message"]["body"], "do you sell bicycles")
        self.assertEqual(self.metrics.bot_external.labels("failed")._value.get(), 1)

    def test_old_messages_are_not_answered(self) -> None:
        """A message older than max_age (a stale backlog) gets no answer."""
        s, t, conv = self.start()
        self.feed.stop()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        msg = self.successResultOf(self.store.get_messages(conv, 1, 1))[0]
        self.clock.advance(BotConfig().max_age + 1)
        self.successResultOf(self.node.handle(msg))
        self.assertEqual(len(self.bot_messages(t)), 1)
        self.feed.start()

    def test_a_message_of_attachments_only_gets_no_answer(self) -> None:
        """A customer's message with attachments and no text (a photo) is
        not a miss: the bot says nothing to it, and answers the next text."""
        s, t, conv = self.start()
        before = len(self.bot_messages(t))
        msg = Message(conversation_id=conv, msg_id="m-photo", seq=50, sender_id="c:cust", sender_role="customer",
                      client_msg_id="p1", kind=TEXT, body="", ts=self.clock.seconds(),
                      data={"attachments": [{"id": "a1", "name": "mug.jpg"}]})
        self.successResultOf(self.node.handle(msg))
        self.assertEqual(len(self.bot_messages(t)), before)
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "opening hours"})
        self.assertGreater(len(self.bot_messages(t)), before)

    def test_wire_round_trip(self) -> None:
        """A delivered message frame converts back to the stored message."""
        s, t, conv = self.start()
        self.send(s, {"type": "message", "conversation": conv, "client_msg_id": "q1", "body": "x"})
        stored = self.successResultOf(self.store.get_messages(conv, 1, 1))[0]
        self.assertEqual(message_from_wire(stored.to_wire()), stored)


class RecoveryTests(unittest.TestCase):
    """Embedded default: what a crash left unanswered is answered on start, once."""

    @inlineCallbacks
    def test_recover_answers_and_greets_once(self) -> Any:
        """Unanswered customer messages and ungreeted conversations are handled; a second scan adds nothing."""
        from supportchat.storage.sql import SqlConversationStore

        clock = Clock()
        clock.advance(1_800_000_000)
        db = threadless_db(self, "sqlite")
        store = SqlConversationStore(db)
        conv1, _ = yield store.open_conversation("c1", clock.seconds())
        conv2, _ = yield store.open_conversation("c2", clock.seconds())
        yield store.append(AppendRequest(conv1.id, "c1", "customer", TEXT, "opening hours", clock.seconds(), "k1"))
        metrics = Metrics()
        node = BotNode(clock, store, MessageWriter(clock, store, LocalBus(), metrics), SqlBotStateStore(db), dialogue(),
                       BusinessHours([]), metrics, BotConfig())
        self.assertEqual((yield node.recover(db)), 2)
        self.assertEqual((yield node.recover(db)), 0)
        m1 = yield store.get_messages(conv1.id, 0, 10)
        m2 = yield store.get_messages(conv2.id, 0, 10)
        self.assertEqual([m.sender_role for m in m1], ["customer", "bot", "bot"])  # greeting + answer
        self.assertIn("Monday", m1[-1].body)
        self.assertEqual([m.sender_role for m in m2], ["bot"])


# -- HTTP adapter ------------------------------------------------------------

class _Service(resource.Resource):
    isLeaf = True

    def __init__(self, replies: list[tuple[int, Any]]) -> None:
        super().__init__()
        self.replies = replies
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        headers = {k.decode(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, request.content.read()))
        code, body = self.replies.pop(0) if self.replies else (200, {"reply": "ok"})
        request.setResponseCode(code)
        return json.dumps(body).encode()


class HttpStubTests(unittest.TestCase):
    """The adapter against treq.testing.StubTreq."""

    def make(self, replies: list[tuple[int, Any]], retries: int = 2) -> tuple[HttpExternalBot, _Service, Clock]:
        from treq.testing import StubTreq

        clock = Clock()
        clock.advance(1_800_000_000)
        service = _Service(replies)
        return HttpExternalBot(clock, StubTreq(service), "https://bot.example/answer", "s3cret", 3.0, retries,
                               backoff=0.0), service, clock

    def test_signed_request_and_answer(self) -> None:
        """The context is POSTed as JSON with a valid HMAC signature; the answer is parsed."""
        bot, service, clock = self.make([(200, {"reply": "Hello", "quick_replies": [{"label": "A", "text": "a"}]})])
        answer = self.successResultOf(bot.ask({"message": {"body": "hi 你好"}}))
        self.assertEqual((answer.reply, answer.quick_replies[0].text, answer.handoff), ("Hello", "a", False))
        [(headers, body)] = service.requests
        self.assertEqual(json.loads(body), {"message": {"body": "hi 你好"}})
        self.assertEqual(headers[SIGNATURE_HEADER], sign(b"s3cret", headers[TIMESTAMP_HEADER], body))
        self.assertEqual(headers[TIMESTAMP_HEADER], "1800000000")

    def test_server_errors_are_retried_then_given_up(self) -> None:
        """5xx is retried up to the bound; then the answer is None."""
        bot, service, clock = self.make([(500, {}), (503, {}), (502, {})], retries=2)
        d = bot.ask({})
        clock.pump([0.0] * 5)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(service.requests), 3)

    def test_retry_succeeds_and_client_errors_are_final(self) -> None:
        """A 500 then 200 succeeds; a 400 is not retried."""
        bot, service, clock = self.make([(500, {}), (200, {"reply": "late", "handoff": True})])
        d = bot.ask({})
        clock.pump([0.0] * 3)
        answer = self.successResultOf(d)
        self.assertEqual((answer.reply, answer.handoff), ("late", True))
        bot2, service2, _ = self.make([(400, {})])
        self.assertIsNone(self.successResultOf(bot2.ask({})))
        self.assertEqual(len(service2.requests), 1)


class _Hang(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_POST(self, request: Any) -> Any:
        self.hits += 1
        return server.NOT_DONE_YET  # never answers


class HttpRealServerTests(unittest.TestCase):
    """The adapter against a real local HTTP server (real sockets, real reactor)."""

    @inlineCallbacks
    def serve(self, root: resource.Resource) -> Any:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        site = server.Site(root)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/answer"

    def client(self) -> Any:
        from tests.support import http_client

        return http_client()

    @inlineCallbacks
    def test_timeout_is_bounded_and_retried(self) -> Any:
        """A server that never answers costs at most (retries+1) x timeout, then None."""
        hang = _Hang()
        url = yield self.serve(hang)
        bot = HttpExternalBot(reactor, self.client(), url, "k", timeout=0.3, retries=1, backoff=0.05)
        start = reactor.seconds()
        answer = yield bot.ask({"x": 1})
        elapsed = reactor.seconds() - start
        self.assertIsNone(answer)
        self.assertEqual(hang.hits, 2)
        self.assertLess(elapsed, 2.0)

    @inlineCallbacks
    def test_errors_and_refused_connections(self) -> Any:
        """A 500 from a real server and a closed port both end in None after bounded retries."""
        service = _Service([(500, {}), (500, {})])
        url = yield self.serve(service)
        bot = HttpExternalBot(reactor, self.client(), url, "k", timeout=2.0, retries=1, backoff=0.01)
        self.assertIsNone((yield bot.ask({})))
        self.assertEqual(len(service.requests), 2)
        from tests.support import free_port

        closed = HttpExternalBot(reactor, self.client(), f"http://127.0.0.1:{free_port()}/", "k", timeout=2.0,
                                 retries=1, backoff=0.01)
        self.assertIsNone((yield closed.ask({})))
        self.assertEqual(closed.attempts, 2)


# -- end to end (embedded default) -------------------------------------------

class EmbeddedServerTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_customer_gets_greeting_answers_and_a_human(self) -> Any:
        """Fresh embedded server: greeting, a correct FAQ answer in each language, a flow,
        a handoff on request, and silence after the agent accepts."""
        running = yield start_server(self, bot={"enabled": True})
        cust = yield connect(running.port, token("cust"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        greeting = yield cust.next_frame("message", is_chat)
        self.assertEqual(greeting["sender"]["role"], "bot")
        before = [m["event"]["name"] for m in cust.of_type("message") if m["seq"] < greeting["seq"]]
        self.assertEqual(before, ["created"])  # the greeting is the first thing said

        def ask(key: str, body: str) -> Any:
            return ask_bot(cust, conv, key, body)

        self.assertIn("Monday to Friday", (yield ask("q1", "when r u open"))["body"])
        self.assertIn("免运费", (yield ask("q2", "运费多少钱"))["body"])
        self.assertIn("order number", (yield ask("q3", "where is my order"))["body"])
        self.assertIn("A123456 has shipped", (yield ask("q4", "A123456"))["body"])
        yield ask("q5", "human")
        event = yield cust.next_frame("message")
        self.assertEqual((event["kind"], event["event"]["name"]), ("event", "handoff"))
        agent = yield connect(running.port, token("ag", "agent"))
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        yield agent.next_frame("conversation")
        agent.send({"type": "sync", "ref": "h", "conversation": conv, "after_seq": 0, "limit": 100})
        history = yield agent.next_frame("history")
        self.assertIn("handoff", [m.get("event", {}).get("name") for m in history["messages"]])
        cust.send({"type": "message", "ref": "q6", "conversation": conv, "client_msg_id": "q6", "body": "opening hours"})
        ack = yield cust.next_frame("ack")
        agent.send({"type": "message", "ref": "r", "conversation": conv, "client_msg_id": "r", "body": "Hi, I'm Ann"})
        reply = yield cust.next_frame("message")
        while reply["sender"]["role"] != "agent":
            self.assertLessEqual(reply["seq"], ack["seq"], "the bot spoke after the agent joined")
            reply = yield cust.next_frame("message")
        self.assertEqual(reply["seq"], ack["seq"] + 1)
        metrics = running.server.get_metrics()
        samples = {x.name: x.value for x in metrics.bot_reply_latency.collect()[0].samples if not x.labels.get("le")}
        count, total = samples["bot_reply_latency_seconds_count"], samples["bot_reply_latency_seconds_sum"]
        self.assertGreaterEqual(count, 5)
        self.assertLess(total / count, 1.0)
        if os.environ.get("BOT_TEST_REPORT"):
            with open(os.environ["BOT_TEST_REPORT"], "a") as report:
                report.write(f"bot reply latency: {count:.0f} replies, mean {1000 * total / count:.1f} ms\n")
        self.assertEqual(metrics.bot_handoffs.labels("customer_request")._value.get(), 1)
        yield close_client(cust)
        yield close_client(agent)


class CommandTests(unittest.SynchronousTestCase):
    def test_bot_command_needs_redis_and_a_valid_knowledge_file(self) -> None:
        """`supportchat bot` is refused without Redis; `run` refuses an unusable knowledge file."""
        from twisted.python import usage

        from supportchat.tap import Options

        data = self.mktemp()
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["bot", "--data-dir", data])
        self.assertIn("the bot needs Redis", str(e))
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write('[bot]\nknowledge = "/nonexistent/bot.toml"\n')
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["run", "--config", bad, "--data-dir", data])
        self.assertIn("bot.knowledge", str(e))
