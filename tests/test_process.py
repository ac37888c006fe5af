"""The real deployable: ``twistd -n supportchat run`` as a process. Crash
recovery (kill -9) and graceful SIGTERM drain."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import ServerProcess, close_client, connect, free_port, token


class ProcessTests(unittest.TestCase):
    timeout = 120

    def server_env(self) -> dict[str, str]:
        """Extra environment for the server (the engine variants in
        tests/test_engines_e2e.py set SUPPORTCHAT_DATABASE_URL)."""
        return {}

    def server(self, data_dir: str | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or self.data_dir, free_port(), self.server_env())
        self.addCleanup(proc.kill)
        return proc

    def setUp(self) -> None:
        self.data_dir = self.mktemp()

    @inlineCallbacks
    def chat(self, port: int) -> Any:
        cust = yield connect(port, token("cust"))
        agent = yield connect(port, token("agent", "agent"))
        cust.send({"type": "start", "ref": 0})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": 0, "conversation": conv})
        yield agent.next_frame("conversation")
        return cust, agent, conv

    @inlineCallbacks
    def history(self, port: int, conv: str) -> Any:
        client = yield connect(port, token("cust"))
        client.send({"type": "sync", "ref": 1, "conversation": conv, "after_seq": 0, "limit": 500})
        page = yield client.next_frame("history")
        yield close_client(client)
        return page["messages"]

    @inlineCallbacks
    def test_every_acked_message_survives_kill_9(self) -> Any:
        """Messages acknowledged before a SIGKILL are all there after a restart, once each, gapless."""
        proc = self.server()
        yield proc.start()
        cust, agent, conv = yield self.chat(proc.port)
        for i in range(40):
            cust.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"k{i}", "body": f"m{i}"})
        acks = []
        for _ in range(40):
            acks.append((yield cust.next_frame("ack")))
        proc.signal("KILL")
        yield proc.ended()
        yield cust.closed
        yield agent.closed
        again = self.server()
        yield again.start()
        messages = yield self.history(again.port, conv)
        texts = [m for m in messages if m["kind"] == "text"]
        self.assertEqual([m["msg_id"] for m in texts], [a["msg_id"] for a in acks])
        self.assertEqual([m["seq"] for m in messages], list(range(1, len(messages) + 1)))
        self.assertEqual([m["body"] for m in texts], [f"m{i}" for i in range(40)])
        # A resend after the crash is recognised, not stored again.
        cust2 = yield connect(again.port, token("cust"))
        cust2.send({"type": "message", "ref": "r", "conversation": conv, "client_msg_id": "k7", "body": "m7"})
        ack = yield cust2.next_frame("ack")
        self.assertEqual((ack["msg_id"], ack["duplicate"]), (acks[7]["msg_id"], True))
        yield close_client(cust2)
        again.signal("TERM")
        self.assertEqual((yield again.ended()), 0)

    @inlineCallbacks
    def test_sigterm_closes_1001_finishes_commits_and_exits_0(self) -> Any:
        """SIGTERM: sockets close with 1001, messages sent just before are
        committed (acked ones are stored), and the process exits 0."""
        proc = self.server()
        yield proc.start()
        cust, agent, conv = yield self.chat(proc.port)
        for i in range(20):
            cust.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"t{i}", "body": f"t{i}"})
        first = yield cust.next_frame("ack")
        proc.signal("TERM")
        _, code, _ = yield cust.closed
        _, agent_code, _ = yield agent.closed
        exit_code = yield proc.ended()
        self.assertEqual((code, agent_code, exit_code), (1001, 1001, 0))
        acked = {f["msg_id"] for f in cust.of_type("ack")}
        self.assertIn(first["msg_id"], acked)
        again = self.server()
        yield again.start()
        stored = {m["msg_id"] for m in (yield self.history(again.port, conv))}
        self.assertTrue(acked <= stored, "an acknowledged message was lost")
        again.signal("TERM")
        yield again.ended()
