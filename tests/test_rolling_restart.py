"""A rolling restart under load loses and repeats nothing.

A Redis-mode deployment of real processes (two gateways, a persister and a
bot node on a private Redis) serves four clients that never stop sending.
Every process is restarted in turn (SIGTERM, started again, waited for);
clients of a stopped gateway reconnect to the other one and resend what was
not acknowledged, with the same ``client_msg_id``. Afterwards every
acknowledged message is in SQL exactly once, gapless per conversation, each
client's sync returns each of its messages once and reaches the last seq."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from tests.redis_support import REDIS_SKIP
from tests.support import ServerProcess, close_client, free_port
from tests.test_cluster import Cluster, open_conversation
from tests.traffic import Talker, synced, until


class RollingRestartTests(unittest.TestCase):
    timeout = 240

    skip = REDIS_SKIP

    @inlineCallbacks
    def start(self, cluster: Cluster, role: str, name: str, port: int | None = None) -> Any:
        env = dict(cluster.env)
        marker = None
        if role == "gateway":
            marker = "Connected to Redis (redis)"
        elif role == "bot":
            env.update(SUPPORTCHAT_BOT_ENABLED="true", SUPPORTCHAT_BOT_CLAIM_IDLE="1")
            marker = "Connected to Redis (redis-subscriber)"
        proc = ServerProcess(cluster.data_dir, port, env, role=role, name=name, marker=marker)
        self.addCleanup(proc.kill)
        yield proc.start()
        return proc

    @inlineCallbacks
    def test_every_process_restarted_in_turn_under_traffic(self) -> Any:
        """gw1, gw2, the persister and the bot node are each stopped (SIGTERM)
        and started again while four clients send: every process exits
        cleanly, every sent message is acknowledged, stored exactly once as
        acknowledged, gapless, and every client's sync reaches the last seq."""
        cluster = Cluster(self)
        ports = {"gw1": free_port(), "gw2": free_port()}
        procs = {
            "gw1": (yield self.start(cluster, "gateway", "gw1", ports["gw1"])),
            "gw2": (yield self.start(cluster, "gateway", "gw2", ports["gw2"])),
            "p1": (yield self.start(cluster, "persister", "p1")),
            "b1": (yield self.start(cluster, "bot", "b1")),
        }
        talkers: list[Talker] = []
        conversations = []
        for i in range(2):
            cust, agent, conv = yield open_conversation(ports["gw1"], ports["gw2"], f"cust{i}", f"agent{i}")
            yield close_client(cust)
            yield close_client(agent)
            conversations.append(conv)
            talkers.append(Talker(f"cust{i}", "customer", conv, lambda: [ports["gw1"], ports["gw2"]], f"c{i}-"))
            talkers.append(Talker(f"agent{i}", "agent", conv, lambda: [ports["gw2"], ports["gw1"]], f"a{i}-"))
        for t in talkers:
            t.start()

        def acked() -> int:
            return sum(len(t.acks) for t in talkers)

        roles = {"gw1": "gateway", "gw2": "gateway", "p1": "persister", "b1": "bot"}
        for name in ("gw1", "gw2", "p1", "b1"):
            before = acked()
            yield until(lambda b=before: acked() >= b + 20, f"traffic before restarting {name}")
            procs[name].signal("TERM")
            self.assertEqual((yield procs[name].ended()), 0, f"{name} did not stop cleanly")
            procs[name] = yield self.start(cluster, roles[name], name, ports.get(name))
        before = acked()
        yield until(lambda: acked() >= before + 20, "traffic after the last restart")
        yield gatherResults([t.stop() for t in talkers])
        for t in talkers:
            self.assertEqual(t.problems, [], t.user)
        self.assertGreater(sum(t.reconnects for t in talkers), 0, "no client was moved by a restart")
        self.assertEqual(sum(t.sent for t in talkers), acked())

        def flushed() -> bool:
            stored = {r[0] for r in cluster.sql("SELECT client_msg_id FROM messages WHERE client_msg_id IS NOT NULL")}
            return cluster.backlog() == 0 and all(k in stored for t in talkers for k in t.acks)

        yield until(flushed, "the persister to flush every acknowledged message", 60)
        for conv in conversations:
            acks = {k: a for t in talkers if t.conversation == conv for k, a in t.acks.items()}
            cluster.assert_stored_once(conv, acks)
            last = cluster.sql("SELECT MAX(seq) FROM messages WHERE conversation_id = ?", conv)[0][0]
            for t in talkers:
                if t.conversation != conv:
                    continue
                history = yield synced(ports["gw1"], t.user, t.role, conv)
                texts = [m["client_msg_id"] for m in history if m["kind"] == "text" and m["sender"]["id"] == t.user]
                self.assertEqual(sorted(texts), sorted(t.acks), f"{t.user}: sync is not each message once")
                self.assertEqual(history[-1]["seq"], last, f"{t.user} did not resume to the last seq")
