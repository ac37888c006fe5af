"""Bot nodes as real processes on a private Redis: a bot node killed
(SIGKILL) mid-dialogue is replaced and the dialogue continues at the same
step, every customer message answered exactly once; with the bot first, a
conversation goes bot -> handoff -> queue -> agent across processes."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial import unittest

from tests.redis_support import REDIS_SKIP
from tests.support import ServerProcess, close_client, connect, is_chat, online_agent, token
from tests.test_cluster import Cluster


def first_chat(client: Any) -> Any:
    """The first chat message the client has (it may have come before the
    ``conversation`` frame that answers ``start``: the bot's greeting is
    fanned out in Redis, which can beat the gateway's own reply), or the
    next one."""
    seen = [f for f in client.of_type("message") if is_chat(f)]
    return succeed(seen[0]) if seen else client.next_frame("message", is_chat)


class BotClusterTests(unittest.TestCase):
    timeout = 240

    skip = REDIS_SKIP

    @inlineCallbacks
    def bot(self, cluster: Cluster, name: str) -> Any:
        env = dict(cluster.env, SUPPORTCHAT_BOT_ENABLED="true", SUPPORTCHAT_BOT_CLAIM_IDLE="1")
        # Ready once its group on the bots' stream exists (what gateways add
        # there from then on is read); greetings of new conversations also
        # arrive by pub/sub.
        proc = ServerProcess(cluster.data_dir, None, env, role="bot", name=name,
                             marker=f"Bot consumer {name} reads sc:bot as group bots")
        self.addCleanup(proc.kill)
        yield proc.start()
        return proc

    @inlineCallbacks
    def test_kill_and_resume_mid_flow(self) -> Any:
        """Greeting and the order-status flow's first step come from bot node b1; b1 is
        killed with -9 right after the next message; b2 takes over at the same step
        (validation, then the answer) and each customer message has exactly one answer."""
        cluster = Cluster(self)
        gw = yield cluster.gateway("gw1")
        yield cluster.persister("p1")
        b1 = yield self.bot(cluster, "b1")
        cust = yield connect(gw.port, token("cust"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        greeting = yield first_chat(cust)  # after the "created" event
        self.assertEqual(greeting["sender"]["role"], "bot")
        acks: dict[str, Any] = {}

        @inlineCallbacks
        def ask(key: str, body: str, wait: bool = True) -> Any:
            cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": body})
            acks[key] = yield cust.next_frame("ack")
            if not wait:
                return None
            while True:
                frame = yield cust.next_frame("message")
                if frame["sender"]["role"] == "bot" and frame["client_msg_id"] == f"bot:{acks[key]['msg_id']}":
                    return frame

        self.assertIn("order number", (yield ask("k1", "where is my order"))["body"])
        yield ask("k2", "12345", wait=False)
        b1.signal("KILL")  # maybe before, maybe after it answered k2: either way once
        yield b1.ended()
        yield self.bot(cluster, "b2")
        while True:
            frame = yield cust.next_frame("message")
            if frame["client_msg_id"] == f"bot:{acks['k2']['msg_id']}":
                break
        self.assertIn("doesn't look like an order number", frame["body"])
        self.assertIn("A123456 has shipped", (yield ask("k3", "A123456"))["body"])
        self.assertIn("Monday to Friday", (yield ask("k4", "opening hours"))["body"])
        # The "created" event, 1 greeting + 4 questions + 4 answers, flushed to SQL exactly once each.
        yield cluster.flushed(10, conv)
        cluster.assert_stored_once(conv, acks)
        rows = cluster.sql("SELECT client_msg_id FROM messages WHERE conversation_id = ? AND sender_role = 'bot'"
                           " ORDER BY seq", conv)
        self.assertEqual([r[0] for r in rows],
                         [f"bot:greet:{conv}"] + [f"bot:{acks[k]['msg_id']}" for k in ("k1", "k2", "k3", "k4")])
        state = cluster.redis.cli("HGET", f"sc:bot:{conv}", "version")
        self.assertGreaterEqual(int(state), 5)
        yield close_client(cust)

    @inlineCallbacks
    def test_bot_first_then_queue_then_agent_across_processes(self) -> Any:
        """Redis mode, bot first: gateways hold a new conversation for the bot (not queued,
        not assigned to the online agent on the other gateway); the bot node greets and
        answers; "human" hands off; the conversation is queued and assigned to that agent
        once; the bot is silent afterwards; the log reads created, handoff, queued, assigned."""
        cluster = Cluster(self)
        cluster.env["SUPPORTCHAT_BOT_ENABLED"] = "true"  # gateways hold new conversations for the bot
        gw1 = yield cluster.gateway("gw1")
        gw2 = yield cluster.gateway("gw2")
        yield cluster.persister("p1")
        yield self.bot(cluster, "b1")
        agent = yield online_agent(gw2.port, "ag")
        cust = yield connect(gw1.port, token("cust"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        greeting = yield first_chat(cust)
        self.assertEqual(greeting["sender"]["role"], "bot")
        self.assertEqual(cluster.sql("SELECT state, agent_id FROM work_items WHERE conversation_id = ?", conv),
                         [("bot", None)])

        @inlineCallbacks
        def ask(key: str, body: str) -> Any:
            cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": body})
            ack = yield cust.next_frame("ack")
            return ack

        ack = yield ask("q1", "when are you open")
        answer = yield cust.next_frame("message", lambda f: f["client_msg_id"] == f"bot:{ack['msg_id']}")
        self.assertIn("Monday to Friday", answer["body"])
        self.assertEqual(cust.of_type("queue"), [])
        yield ask("q2", "human")
        handoff = yield cust.next_event("handoff")
        queued = yield cust.next_event("queued")
        assigned = yield cust.next_event("assigned")
        self.assertEqual((queued["event"]["reason"], assigned["event"]["user"]["id"]), ("handoff", "ag"))
        self.assertLess(handoff["seq"], queued["seq"])
        given = yield agent.next_frame("conversation", lambda f: f.get("assigned") is True)
        self.assertEqual(given["conversation"]["id"], conv)
        after = yield ask("q3", "opening hours")
        agent.send({"type": "message", "ref": "r", "conversation": conv, "client_msg_id": "r", "body": "Hi, Ag here"})
        reply = yield cust.next_frame("message", lambda f: f["sender"]["role"] == "agent" and f["kind"] == "text")
        self.assertEqual(reply["seq"], after["seq"] + 1)  # nothing from the bot in between
        rows = yield cluster.flushed(reply["seq"], conv)
        self.assertEqual(rows, reply["seq"])
        names = [r[0] for r in cluster.sql(
            "SELECT data FROM messages WHERE conversation_id = ? AND kind = 'event' ORDER BY seq", conv)]
        lifecycle = [n for n in (json.loads(d).get("name") for d in names)
                     if n in ("created", "handoff", "queued", "assigned")]
        self.assertEqual(lifecycle, ["created", "handoff", "queued", "assigned"])
        self.assertEqual(cluster.sql("SELECT state, agent_id FROM work_items WHERE conversation_id = ?", conv),
                         [("assigned", "ag")])
        yield close_client(cust)
        yield close_client(agent)
