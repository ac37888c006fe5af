"""Redis fail-over through Sentinel loses nothing acknowledged.

A private primary, two replicas and three sentinels (never the shared Redis);
two gateways and a persister find the primary through the sentinels and
acknowledge a message only once a replica has it (``wait_replicas = 1``).
The primary is killed with -9 while four clients send; the sentinels promote
a replica; the clients carry on (retrying refused messages with the same
``client_msg_id``). Every acknowledged message must end up in SQL exactly
once, gapless per conversation, and come back exactly once by sync."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from tests.redis_support import REDIS_SKIP, PrivateRedis, PrivateSentinel
from tests.support import ServerProcess, close_client, free_port, http_client
from tests.test_cluster import open_conversation
from tests.traffic import Talker, pause, synced, until

MASTER = "supportchat"


class SentinelDeployment:
    """Primary, replicas, sentinels and supportchat processes of one test."""

    def __init__(self, testcase: unittest.TestCase, replicas: int = 2) -> None:
        self.testcase = testcase
        self.primary = PrivateRedis()
        self.primary.start()
        testcase.addCleanup(self.primary.cleanup)
        self.replicas = []
        for _ in range(replicas):
            replica = PrivateRedis(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
            replica.start()
            testcase.addCleanup(replica.cleanup)
            self.replicas.append(replica)
        self.sentinels = []
        for _ in range(3):
            sentinel = PrivateSentinel(MASTER, self.primary.port)
            sentinel.start()
            testcase.addCleanup(sentinel.cleanup)
            self.sentinels.append(sentinel)
        self.data_dir = testcase.mktemp()
        self.env = {
            # The host of the URL is not used with sentinels; its database number is.
            "SUPPORTCHAT_REDIS_URL": "redis://sentinel-managed/0",
            "SUPPORTCHAT_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "SUPPORTCHAT_REDIS_SENTINEL_MASTER": MASTER,
            "SUPPORTCHAT_REDIS_WAIT_REPLICAS": "1",
            "SUPPORTCHAT_REDIS_WAIT_TIMEOUT": "0.5",
            "SUPPORTCHAT_REDIS_RETRY_AFTER": "0.5",
            "SUPPORTCHAT_REDIS_MONITOR_INTERVAL": "0.2",
            "SUPPORTCHAT_REDIS_NODE_TTL": "2",
            "SUPPORTCHAT_CHAT_FRAME_RATE": "100000", "SUPPORTCHAT_CHAT_FRAME_BURST": "100000",
        }

    def by_port(self, port: int) -> PrivateRedis:
        return next(r for r in [self.primary, *self.replicas] if r.port == port)

    def current_primary(self) -> PrivateRedis | None:
        """The primary all three sentinels agree on."""
        ports = {s.primary_port() for s in self.sentinels}
        return self.by_port(ports.pop()) if len(ports) == 1 and None not in ports else None

    @inlineCallbacks
    def ready(self) -> Any:
        """Replicas in sync and every sentinel aware of both replicas and of each other."""
        yield until(lambda: all(s.knows(len(self.replicas), 2) for s in self.sentinels),
                    "the sentinels to discover the replicas and each other", 40)

    @inlineCallbacks
    def process(self, role: str, name: str, port: int | None = None, marker: str | None = None) -> Any:
        proc = ServerProcess(self.data_dir, port, self.env, role=role, name=name, marker=marker)
        self.testcase.addCleanup(proc.kill)
        yield proc.start()
        return proc

    def sql(self, query: str, *args: Any) -> list[Any]:
        db = sqlite3.connect(self.data_dir + "/supportchat.db")
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()


def _stream_info(redis: PrivateRedis, field: str) -> int:
    try:
        lines = redis.cli("XINFO", "STREAM", "sc:stream").split("\n")
    except subprocess.CalledProcessError:
        return 0
    fields = dict(zip(lines[0::2], lines[1::2]))
    return int(fields.get(field, 0) or 0)


def _backlog(redis: PrivateRedis) -> int:
    try:
        lines = redis.cli("XINFO", "GROUPS", "sc:stream").split("\n")
    except subprocess.CalledProcessError:
        return -1
    fields = dict(zip(lines[0::2], lines[1::2]))
    return int(fields.get("lag", 0) or 0) + int(fields.get("pending", 0) or 0)


class SentinelFailoverTests(unittest.TestCase):
    timeout = 240

    skip = REDIS_SKIP

    @inlineCallbacks
    def test_primary_killed_under_traffic_loses_nothing_acknowledged(self) -> Any:
        """kill -9 of the Redis primary while four clients send: the sentinels
        promote a replica, the gateways follow it, and every acknowledged
        message is stored exactly once (as acknowledged), gapless per
        conversation, and synced exactly once (by msg_id: a seq taken during
        the outage moves a message to the end); traffic went through Redis
        again afterwards and both gateways left degraded mode."""
        dep = SentinelDeployment(self)
        yield dep.ready()
        gw1 = yield dep.process("gateway", "gw1", free_port(), marker="Connected to Redis (redis)")
        gw2 = yield dep.process("gateway", "gw2", free_port(), marker="Connected to Redis (redis)")
        p1 = yield dep.process("persister", "p1")
        procs = [gw1, gw2, p1]
        ports = [gw1.port, gw2.port]
        talkers: list[Talker] = []
        conversations = []
        for i in range(2):
            cust, agent, conv = yield open_conversation(gw1.port, gw2.port, f"cust{i}", f"agent{i}")
            yield close_client(cust)
            yield close_client(agent)
            conversations.append((conv, f"cust{i}", f"agent{i}"))
            talkers.append(Talker(f"cust{i}", "customer", conv, lambda: ports, f"c{i}-", interval=0.05))
            talkers.append(Talker(f"agent{i}", "agent", conv, lambda: ports[::-1], f"a{i}-", interval=0.05))
        for t in talkers:
            t.start()

        def acked() -> int:
            return sum(len(t.acks) for t in talkers)

        yield until(lambda: acked() >= 40, "acks before the fail-over")
        old = dep.primary
        old.stop(kill=True)
        new = yield until(lambda: (p := dep.current_primary()) is not None and p is not old and p,
                          "the sentinels to promote a replica", 40)
        at_switch, added_at_switch = acked(), _stream_info(new, "entries-added")
        # Traffic goes on through Redis again (the stream grows, not only SQL) and is acknowledged.
        yield until(lambda: acked() >= at_switch + 60 and _stream_info(new, "entries-added") >= added_at_switch + 30,
                    "acks through the new primary", 60)
        yield gatherResults([t.stop() for t in talkers])
        for t in talkers:
            self.assertEqual(t.problems, [], t.user)

        def flushed() -> bool:
            # The primary now (on a busy machine the sentinels may fail over again).
            primary = dep.current_primary()
            if primary is None or primary is old or _backlog(primary) != 0:
                return False
            keys = self.stored_keys(dep)
            return all(k in keys for t in talkers for k in t.acks)

        def missing() -> str:
            keys = self.stored_keys(dep)
            lost = sorted(k for t in talkers for k in t.acks if k not in keys)
            for p in procs:
                with open(f"/tmp/sentinel-test-{p.proto.transport.pid}.log", "wb") as f:
                    f.write(p.proto.output)
            logs = str([f"/tmp/sentinel-test-{p.proto.transport.pid}.log" for p in procs])
            where = []
            for r in dep.replicas:
                try:
                    role = r.cli("ROLE").split("\n")[0]
                    idem = [r.cli("EXISTS", f"sc:idem:{k.split('-')[0].replace('c', 'cust').replace('a', 'agent')}:{k}")
                            for k in lost[:5]]
                    where.append(f"{r.port} {role} backlog={_backlog(r)} xlen={r.cli('XLEN', 'sc:stream')} idem={idem}")
                except subprocess.CalledProcessError as e:
                    where.append(f"{r.port}: {e}")
            ack0 = [t.acks[lost[0]] for t in talkers if lost and lost[0] in t.acks]
            rows = dep.sql("SELECT seq, msg_id, client_msg_id, kind, body, data FROM messages"
                           " WHERE conversation_id = ? AND seq BETWEEN ? AND ? ORDER BY seq", ack0[0]["conversation"],
                           ack0[0]["seq"] - 3, ack0[0]["seq"] + 3) if ack0 else []
            rows.append(dep.replicas[0].cli("XLEN", "sc:dead"))
            info = []
            for r in dep.replicas:
                try:
                    info.append([line for line in r.cli("INFO", "replication").split("\n")
                                 if line.startswith(("role", "master_port", "master_link", "connected_slaves"))])
                except subprocess.CalledProcessError as e:
                    info.append(str(e))
            sentinel_view = [s.cli("SENTINEL", "master", MASTER).replace("\n", " ")[:300] for s in dep.sentinels]
            return (f"{len(lost)} missing: {lost[:20]}\n{where}\n{rows}\n{info}\n{sentinel_view}\n"
                    f"acks: {[t.acks.get(lost[0]) for t in talkers if lost and lost[0] in t.acks]}\n{logs}")

        yield until(flushed, "the persister to flush every acknowledged message", 60, missing)
        for conv, cust, agent in conversations:
            rows = dep.sql("SELECT seq, msg_id, client_msg_id, data FROM messages WHERE conversation_id = ?"
                           " ORDER BY seq", conv)
            self.assertEqual([r[0] for r in rows], list(range(1, len(rows) + 1)), "seqs are not gapless")
            acks = {k: a for t in talkers if t.conversation == conv for k, a in t.acks.items()}
            by_key: dict[str, list[tuple[int, str]]] = {}
            duplicate_of: dict[str, str] = {}
            for seq, msg_id, key, data in rows:
                if key is not None:
                    by_key.setdefault(key, []).append((seq, msg_id))
                event = json.loads(data) if data else {}
                if event.get("name") == "duplicate":
                    duplicate_of[msg_id] = event.get("of")
            for key, ack in acks.items():
                # The acknowledged message, once. Its seq is the acknowledged one unless a
                # degraded-mode commit took that seq during the outage: then the persister
                # moved it to the end (docs/deploy.md, "What an acknowledgement means").
                stored = [m for _, m in by_key.get(key, [])]
                self.assertEqual(len(stored), 1, f"{key} not stored once: {stored}")
                if stored != [ack["msg_id"]]:
                    # The other documented clash: a copy committed to SQL while Redis was
                    # unreachable (its ack lost) and the acknowledged retry through Redis;
                    # the retry's entry becomes a ``duplicate`` event of the stored copy.
                    self.assertEqual(duplicate_of.get(ack["msg_id"]), stored[0],
                                     f"{key}: acknowledged {ack['msg_id']} is neither stored nor a duplicate of it")
            history = yield synced(gw2.port, agent, "agent", conv)
            texts = [m["client_msg_id"] for m in history if m["kind"] == "text"]
            self.assertEqual(sorted(texts), sorted(acks), "sync does not return each message exactly once")
            self.assertEqual(history[-1]["seq"], rows[-1][0])
        # The refusals (if any) were answered, not lost: every sent message was acknowledged.
        self.assertEqual(sum(t.sent for t in talkers), acked())
        for gw in (gw1, gw2):  # both gateways back on Redis, not degraded
            for _ in range(300):
                readiness = yield self.readiness(gw.port)
                if (readiness["redis"], readiness["degraded"]) == ("ok", False):
                    break
                yield pause(0.1)
            self.assertEqual((readiness["redis"], readiness["degraded"]), ("ok", False))

    def stored_keys(self, dep: SentinelDeployment) -> set[str]:
        return {r[0] for r in dep.sql("SELECT client_msg_id FROM messages WHERE client_msg_id IS NOT NULL")}

    @inlineCallbacks
    def readiness(self, port: int) -> Any:
        response = yield http_client().get(f"http://127.0.0.1:{port}/readyz")
        body = yield response.content()
        return json.loads(body)


class _FakeSentinel(Protocol):
    """Answers every ``SENTINEL get-master-addr-by-name`` with the factory's port."""

    def dataReceived(self, data: bytes) -> None:
        self.buffer = getattr(self, "buffer", b"") + data
        while self.buffer.count(b"\r\n") >= 7:  # *3 $8 SENTINEL $23 get-master-addr-by-name $n name
            parts = self.buffer.split(b"\r\n", 7)
            self.buffer = parts[7]
            self.factory.asked += 1
            port = str(self.factory.port).encode()
            self.transport.write(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))


class SentinelClientTests(unittest.TestCase):
    """RedisClient with sentinels, against a scripted sentinel and real servers."""

    timeout = 60

    skip = REDIS_SKIP

    @inlineCallbacks
    def test_only_a_primary_is_used_and_readonly_reconnects(self) -> Any:
        """A named server that answers ROLE as a replica is left and the
        sentinels asked again; once they name the primary, commands work;
        when that primary is demoted, a write answered READONLY fails as
        'unavailable' and the client reconnects to the new primary."""
        from twisted.internet import reactor

        from supportchat.redis.connection import RedisClient, RedisUnavailable

        a = PrivateRedis()
        a.start()
        self.addCleanup(a.cleanup)
        b = PrivateRedis(extra_args=["--replicaof", "127.0.0.1", str(a.port)])
        b.start()
        self.addCleanup(b.cleanup)
        factory = Factory.forProtocol(_FakeSentinel)
        factory.asked, factory.port = 0, b.port  # names the replica first
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client = RedisClient(reactor, "redis://unused/0", name="redis-test",
                             sentinels=[f"127.0.0.1:{listening.getHost().port}"], sentinel_master=MASTER)
        client.service.startService()
        self.addCleanup(client.service.stopService)
        yield until(lambda: factory.asked >= 3, "the client to ask the sentinel again", 20)
        self.assertFalse(client.connected, "a replica was used as the primary")
        factory.port = a.port
        yield until(lambda: client.connected, "the client to reach the primary", 20)
        self.assertEqual((yield client.execute("SET", "k", "1")), "OK")
        # Fail-over by hand: b becomes the primary, a its replica.
        b.cli("REPLICAOF", "NO", "ONE")
        a.cli("REPLICAOF", "127.0.0.1", str(b.port))
        factory.port = b.port
        asked = factory.asked
        yield self.assertFailure(client.execute("SET", "k", "2"), RedisUnavailable)
        yield until(lambda: client.connected and factory.asked > asked, "the client to follow the new primary", 20)
        self.assertEqual((yield client.execute("SET", "k", "3")), "OK")
        self.assertEqual(b.cli("GET", "k"), "3")

    @inlineCallbacks
    def test_recheck_follows_a_primary_named_without_a_broken_connection(self) -> Any:
        """When the sentinels name another primary while the old one is still
        reachable (a partition), ``recheck_primary`` (called when replicas stop
        confirming writes) leaves it and connects to the new one; while they
        name the same one, it keeps the connection."""
        from twisted.internet import reactor

        from supportchat.redis.connection import RedisClient

        a, b = PrivateRedis(), PrivateRedis()
        for server in (a, b):
            server.start()
            self.addCleanup(server.cleanup)
        factory = Factory.forProtocol(_FakeSentinel)
        factory.asked, factory.port = 0, a.port
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client = RedisClient(reactor, "redis://unused/0", name="redis-test",
                             sentinels=[f"127.0.0.1:{listening.getHost().port}"], sentinel_master=MASTER)
        client.service.startService()
        self.addCleanup(client.service.stopService)
        yield until(lambda: client.connected, "the client to reach a", 20)
        first = client.protocol()
        yield client.recheck_primary()
        self.assertIs(client.protocol(), first)
        factory.port = b.port
        yield client.recheck_primary()
        yield until(lambda: client.connected and client.protocol() is not first, "the client to move to b", 20)
        yield client.execute("SET", "where", "b")
        self.assertEqual(b.cli("GET", "where"), "b")
