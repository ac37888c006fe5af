"""Several real processes on one private Redis: gateways, persisters,
kill -9, Redis restarts, backpressure. Every test checks the same things a
user relies on: each acknowledged message is stored exactly once, seqs are
gapless, and everyone sees everything (live or through sync)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.redis_support import REDIS_SKIP, PrivateRedis
from tests.support import (
    ConnectionRefused, ServerProcess, close_client, connect, free_port, http_client, online_agent, token,
)


class Cluster:
    """A private Redis and the processes of one test, all cleaned up."""

    def __init__(self, testcase: unittest.TestCase, appendonly: bool = False, **redis_options: str) -> None:
        self.testcase = testcase
        self.redis = PrivateRedis(appendonly=appendonly)
        self.redis.start()
        testcase.addCleanup(self.redis.cleanup)
        self.data_dir = testcase.mktemp()
        self.env = {"SUPPORTCHAT_REDIS_URL": self.redis.url, "SUPPORTCHAT_REDIS_MONITOR_INTERVAL": "0.2",
                    "SUPPORTCHAT_REDIS_NODE_TTL": "2",
                    # Tests send in bursts; the per-connection frame limit is tested elsewhere.
                    "SUPPORTCHAT_CHAT_FRAME_RATE": "100000", "SUPPORTCHAT_CHAT_FRAME_BURST": "100000"}
        for key, value in redis_options.items():
            self.env[f"SUPPORTCHAT_REDIS_{key.upper()}"] = value

    @inlineCallbacks
    def gateway(self, name: str) -> Any:
        # Ready once it has reached Redis (it refuses chat before that).
        proc = ServerProcess(self.data_dir, free_port(), self.env, role="gateway", name=name,
                             marker="Connected to Redis (redis)")
        self.testcase.addCleanup(proc.kill)
        yield proc.start()
        return proc

    @inlineCallbacks
    def persister(self, name: str) -> Any:
        proc = ServerProcess(self.data_dir, None, self.env, role="persister", name=name)
        self.testcase.addCleanup(proc.kill)
        yield proc.start()
        return proc

    def sql(self, query: str, *args: Any) -> list[Any]:
        db = sqlite3.connect(self.data_dir + "/supportchat.db")
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def backlog(self) -> int:
        try:
            info = self.redis.cli("XINFO", "GROUPS", "sc:stream").split("\n")
        except Exception:
            return -1
        fields = dict(zip(info[0::2], info[1::2]))
        return int(fields.get("lag", 0) or 0) + int(fields.get("pending", 0) or 0)

    @inlineCallbacks
    def flushed(self, expected_rows: int, conv: str) -> Any:
        """Wait (bounded) until the persisters have written ``expected_rows``."""
        for _ in range(300):
            rows = self.sql("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", conv)[0][0]
            if rows >= expected_rows and self.backlog() == 0:
                return rows
            yield task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"persisters did not catch up: {rows} rows of {expected_rows}")

    def assert_stored_once(self, conv: str, acks: dict[str, dict[str, Any]]) -> None:
        rows = self.sql("SELECT seq, msg_id, client_msg_id FROM messages WHERE conversation_id = ? ORDER BY seq", conv)
        tc = self.testcase
        tc.assertEqual([r[0] for r in rows], list(range(1, len(rows) + 1)), "seqs are not gapless")
        by_key: dict[str, list[Any]] = {}
        for seq, msg_id, key in rows:
            if key is not None:
                by_key.setdefault(key, []).append((seq, msg_id))
        for key, ack in acks.items():
            tc.assertEqual(by_key.get(key), [(ack["seq"], ack["msg_id"])], f"{key} not stored exactly once as acked")


@inlineCallbacks
def open_conversation(cust_port: int, agent_port: int, customer: str = "cust", agent: str = "agent") -> Any:
    cust = yield connect(cust_port, token(customer))
    ag = yield connect(agent_port, token(agent, "agent"))
    cust.send({"type": "start", "ref": "start"})
    conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
    ag.send({"type": "accept", "ref": "accept", "conversation": conv})
    while True:
        frame = yield ag.next_frame("conversation")
        if frame.get("ref") == "accept":
            break
    return cust, ag, conv


class ClusterTests(unittest.TestCase):
    timeout = 240

    skip = REDIS_SKIP

    @inlineCallbacks
    def test_customer_and_agent_on_different_gateways(self) -> Any:
        """Across three gateways: new-conversation notice, join, messages,
        typing and read receipts all cross nodes; a persister stores it all."""
        cluster = Cluster(self)
        gws = []
        for name in ("gw1", "gw2", "gw3"):
            gws.append((yield cluster.gateway(name)))
        yield cluster.persister("p1")
        watcher = yield connect(gws[1].port, token("watcher", "agent"))
        cust, agent, conv = yield open_conversation(gws[0].port, gws[2].port)
        notice = yield watcher.next_frame("conversation")
        self.assertEqual(notice["conversation"]["id"], conv)
        yield cust.next_event("joined")
        lifecycle = [(m["event"]["name"], m["seq"]) for m in cust.of_type("message")]
        self.assertEqual(lifecycle, [("created", 1), ("queued", 2), ("joined", 3)])
        acks = {}
        for i in range(10):
            cust.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"c{i}", "body": f"hello {i}"})
            acks[f"c{i}"] = yield cust.next_frame("ack")
        got = []
        while len(got) < 10:
            frame = yield agent.next_frame("message")
            if frame["kind"] == "text":
                got.append(frame)
        self.assertEqual([m["seq"] for m in got], [acks[f"c{i}"]["seq"] for i in range(10)])
        agent.send({"type": "message", "ref": "a", "conversation": conv, "client_msg_id": "a0", "body": "hi there"})
        acks["a0"] = yield agent.next_frame("ack")
        reply = yield cust.next_frame("message")
        self.assertEqual((reply["body"], reply["sender"]["id"]), ("hi there", "agent"))
        cust.send({"type": "typing", "conversation": conv})
        self.assertEqual((yield agent.next_frame("typing"))["user_id"], "cust")
        agent.send({"type": "read", "conversation": conv, "seq": acks["c9"]["seq"]})
        self.assertEqual((yield cust.next_frame("read"))["user_id"], "agent")
        rows = yield cluster.flushed(14, conv)  # 3 lifecycle events, 11 messages
        self.assertEqual(rows, 14)
        cluster.assert_stored_once(conv, acks)
        for c in (cust, agent, watcher):
            yield close_client(c)

    @inlineCallbacks
    def test_kill_9_of_a_gateway_loses_and_duplicates_nothing(self) -> Any:
        """Clients of a gateway killed mid-traffic reconnect to another one,
        resend what was not acknowledged and sync: every message once, gapless."""
        cluster = Cluster(self)
        gw1 = yield cluster.gateway("gw1")
        gw2 = yield cluster.gateway("gw2")
        yield cluster.persister("p1")
        cust, agent, conv = yield open_conversation(gw1.port, gw2.port)
        frames = {f"k{i}": {"type": "message", "ref": f"k{i}", "conversation": conv, "client_msg_id": f"k{i}",
                            "body": f"msg {i}"} for i in range(400)}
        for frame in frames.values():
            cust.send(frame)
        acks: dict[str, Any] = {}
        while len(acks) < 10:
            ack = yield cust.next_frame("ack")
            acks[ack["client_msg_id"]] = ack
        gw1.signal("KILL")
        yield cust.closed
        acks.update({f["client_msg_id"]: f for f in cust.of_type("ack")})
        again = yield connect(gw2.port, token("cust"))
        unacked = [k for k in frames if k not in acks]
        for key in frames:  # resend everything: acked ones must come back identical
            again.send(frames[key])
        for _ in frames:
            ack = yield again.next_frame("ack")
            if ack["client_msg_id"] in acks:
                prior = acks[ack["client_msg_id"]]
                self.assertEqual((ack["msg_id"], ack["seq"]), (prior["msg_id"], prior["seq"]))
            acks[ack["client_msg_id"]] = ack
        self.assertGreater(len(unacked), 0)
        rows = yield cluster.flushed(403, conv)  # created, queued, joined + 400
        self.assertEqual(rows, 403)
        cluster.assert_stored_once(conv, acks)
        agent.send({"type": "sync", "ref": "s", "conversation": conv, "after_seq": 0, "limit": 500})
        history = yield agent.next_frame("history")
        self.assertEqual(sorted(m["client_msg_id"] for m in history["messages"] if m["kind"] == "text"), sorted(frames))
        yield close_client(again)
        yield close_client(agent)

    @inlineCallbacks
    def test_kill_9_of_a_persister_mid_batch(self) -> Any:
        """Entries a killed persister had read but not acknowledged are
        claimed by another: every message lands in SQL exactly once."""
        cluster = Cluster(self, persister_batch="5", persister_claim_idle="1")
        gw = yield cluster.gateway("gw1")
        p1 = yield cluster.persister("p1")
        cust, agent, conv = yield open_conversation(gw.port, gw.port)
        acks = {}
        for i in range(300):
            cust.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"p{i}", "body": f"n{i}"})
        pending_of_p1 = 0
        for _ in range(500):  # catch p1 holding read-but-unacknowledged entries
            summary = cluster.redis.cli("XPENDING", "sc:stream", "persisters").split("\n")
            if "p1" in summary:
                pending_of_p1 = int(summary[summary.index("p1") + 1])
                if pending_of_p1:
                    break
            yield task.deferLater(reactor, 0.005, lambda: None)
        p1.signal("KILL")
        yield p1.ended()
        self.assertGreater(pending_of_p1, 0, "p1 was never caught mid-batch")
        for _ in range(300):
            ack = yield cust.next_frame("ack")
            acks[ack["client_msg_id"]] = ack
        yield cluster.persister("p2")
        rows = yield cluster.flushed(303, conv)  # created, queued, joined + 300
        self.assertEqual(rows, 303)
        cluster.assert_stored_once(conv, acks)
        self.assertEqual(cluster.redis.cli("XLEN", "sc:dead"), "0")
        yield close_client(cust)
        yield close_client(agent)

    @inlineCallbacks
    def test_redis_restart_during_traffic(self) -> Any:
        """Redis goes away mid-conversation: gateways keep acknowledging by
        committing to SQL; when Redis is back the stream resumes; nothing
        acked is lost or stored twice and seqs stay gapless."""
        cluster = Cluster(self, appendonly=True)
        gw1 = yield cluster.gateway("gw1")
        gw2 = yield cluster.gateway("gw2")
        yield cluster.persister("p1")
        cust, agent, conv = yield open_conversation(gw1.port, gw2.port)
        acks: dict[str, Any] = {}

        @inlineCallbacks
        def send_batch(prefix: str, n: int) -> Any:
            for i in range(n):
                key = f"{prefix}{i}"
                cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": key})
                reply = yield cust.next_frame()
                while reply.get("type") not in ("ack", "error"):
                    reply = yield cust.next_frame()
                self.assertEqual(reply["type"], "ack", reply)
                acks[key] = reply

        yield send_batch("before", 15)
        cluster.redis.stop()
        yield send_batch("during", 15)
        cluster.redis.start()
        yield send_batch("after", 15)
        rows = yield cluster.flushed(48, conv)  # created, queued, joined + 45
        self.assertEqual(rows, 48)
        cluster.assert_stored_once(conv, acks)
        agent.send({"type": "sync", "ref": "s", "conversation": conv, "after_seq": 0, "limit": 500})
        history = yield agent.next_frame("history")
        self.assertEqual(len([m for m in history["messages"] if m["kind"] == "text"]), 45)
        yield close_client(cust)
        yield close_client(agent)

    @inlineCallbacks
    def test_backpressure_engages_and_releases(self) -> Any:
        """With no persister, the backlog passes the high-water mark and new
        messages get 'unavailable' with a retry hint; once a persister catches
        up below the low-water mark, the same message is accepted."""
        cluster = Cluster(self, backlog_high="20", backlog_low="5")
        gw = yield cluster.gateway("gw1")
        cust, agent, conv = yield open_conversation(gw.port, gw.port)
        refused = None
        acks = {}
        for i in range(400):
            key = f"b{i}"
            cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": key})
            reply = yield cust.next_frame()
            while reply.get("type") not in ("ack", "error"):
                reply = yield cust.next_frame()
            if reply["type"] == "error":
                refused = (key, reply)
                break
            acks[key] = reply
            if i > 20:
                yield task.deferLater(reactor, 0.02, lambda: None)  # let the monitor see the backlog
        self.assertIsNotNone(refused, "backpressure never engaged")
        key, error = refused
        self.assertEqual(error["code"], "unavailable")
        self.assertGreater(error["retry_after"], 0)
        yield cluster.persister("p1")
        for _ in range(100):
            cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": key})
            reply = yield cust.next_frame()
            while reply.get("type") not in ("ack", "error"):
                reply = yield cust.next_frame()
            if reply["type"] == "ack":
                acks[key] = reply
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertIn(key, acks, "backpressure never released")
        yield cluster.flushed(len(acks) + 3, conv)  # + created, queued, joined
        cluster.assert_stored_once(conv, acks)
        yield close_client(cust)
        yield close_client(agent)

    @inlineCallbacks
    def test_conversations_of_an_agent_on_a_dead_node_go_back_to_the_queue(self) -> Any:
        """The gateway holding an agent's only connection is killed with -9 (its grace timer
        dies with it): the other gateway's workflow timer sees the agent connected nowhere,
        sets them offline and puts their conversation back in the queue (queued, reason
        agent_offline), where the next online agent gets it."""
        cluster = Cluster(self)
        cluster.env.update({
            "SUPPORTCHAT_WORKFLOW_OFFLINE_GRACE": "1", "SUPPORTCHAT_WORKFLOW_REQUEUE_OFFLINE_AFTER": "2",
            "SUPPORTCHAT_WORKFLOW_DRAIN_INTERVAL": "0.3", "SUPPORTCHAT_CHAT_PRESENCE_TTL": "3",
            "SUPPORTCHAT_WEBSOCKET_AUTO_PING_INTERVAL": "1"})
        gw1 = yield cluster.gateway("gw1")
        gw2 = yield cluster.gateway("gw2")
        yield cluster.persister("p1")
        ann = yield online_agent(gw2.port, "ann")
        cust = yield connect(gw1.port, token("cust"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        first = yield cust.next_event("assigned")
        self.assertEqual(first["event"]["user"]["id"], "ann")
        gw2.signal("KILL")
        yield ann.closed
        bob = yield online_agent(gw1.port, "bob")
        self.addCleanup(close_client, bob)
        back = yield cust.next_event("queued")
        self.assertEqual((back["event"]["reason"], back["event"]["from"]), ("agent_offline", {"id": "ann"}))
        again = yield cust.next_event("assigned")
        self.assertEqual(again["event"]["user"]["id"], "bob")
        self.assertEqual(cluster.sql("SELECT status, load_count FROM agents WHERE id = 'ann'"), [("offline", 0)])
        self.assertEqual(cluster.sql("SELECT state, agent_id FROM work_items WHERE conversation_id = ?", conv),
                         [("assigned", "bob")])
        yield close_client(cust)

    @inlineCallbacks
    def test_workers_share_one_port(self) -> Any:
        """--workers 3 serves one port from three processes (SO_REUSEPORT);
        clients landing on different workers still chat through Redis, and
        stopping the parent stops the workers."""
        cluster = Cluster(self)
        port = free_port()
        proc = ServerProcess(cluster.data_dir, port, cluster.env, role="run", name="node",
                             extra_args=["--workers", "3"], marker="[worker-2]")
        self.addCleanup(proc.kill)
        yield proc.start()
        treq = http_client()
        seen = set()
        for _ in range(400):
            r = yield treq.get(f"http://127.0.0.1:{port}/readyz")
            body = yield r.json()
            if body["ready"]:
                seen.add(body["node_id"])
            if len(seen) == 3:
                break
        self.assertEqual(seen, {"node", "node-w1", "node-w2"})
        clients = []
        for i in range(6):
            clients.append((yield connect(port, token(f"c{i}"))))
        agent = yield connect(port, token("agent", "agent"))
        for i, c in enumerate(clients):
            c.send({"type": "start", "ref": "s"})
            conv = (yield c.next_frame("conversation"))["conversation"]["id"]
            agent.send({"type": "accept", "ref": f"a{i}", "conversation": conv})
            while (yield agent.next_frame("conversation")).get("ref") != f"a{i}":
                pass
            c.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "m", "body": f"from c{i}"})
            yield c.next_frame("ack")
            while True:
                frame = yield agent.next_frame("message")
                if frame["kind"] == "text":
                    break
            self.assertEqual(frame["body"], f"from c{i}")
        for c in clients + [agent]:
            yield close_client(c)
        proc.signal("TERM")
        self.assertEqual((yield proc.ended()), 0)
        data_dir = os.path.abspath(cluster.data_dir)
        procs = subprocess.run(["ps", "ax", "-o", "args"], capture_output=True, text=True).stdout.splitlines()
        workers = [line for line in procs if "supportchat gateway" in line and data_dir in line]
        self.assertEqual(workers, [], "workers outlived the parent")

    @inlineCallbacks
    def test_workers_die_with_a_killed_parent(self) -> Any:
        """Workers of a parent killed with SIGKILL (no chance to stop them)
        exit on their own instead of serving on as orphans."""
        cluster = Cluster(self)
        port = free_port()
        proc = ServerProcess(cluster.data_dir, port, cluster.env, role="run", name="node",
                             extra_args=["--workers", "2"], marker="[worker-1]")
        self.addCleanup(proc.kill)
        yield proc.start()
        data_dir = os.path.abspath(cluster.data_dir)

        def workers() -> list[str]:
            procs = subprocess.run(["ps", "ax", "-o", "args"], capture_output=True, text=True).stdout.splitlines()
            return [line for line in procs if "supportchat gateway" in line and data_dir in line]

        self.assertEqual(len(workers()), 1)
        proc.signal("KILL")
        yield proc.ended()
        for _ in range(200):  # bounded wait for the worker's exit
            if not workers():
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(workers(), [], "a worker outlived its killed parent")

__all__ = ["ConnectionRefused"]
