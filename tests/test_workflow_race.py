"""Race tests of automatic assignment: hundreds of conversations, dozens of
agents going on and offline, on the embedded default (one process, SQLite)
and in Redis mode (two gateway nodes and a persister on a private Redis).
Capacity is never exceeded, each conversation is assigned exactly once,
the queue drains completely, and every conversation's log reads created,
queued, assigned, closed in that order."""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.redis_support import REDIS_SKIP
from tests.support import start_server
from tests.test_cluster import Cluster
from tests.workflow_race import check_race, lifecycle_logs, run_race

CONVERSATIONS, AGENTS, CAPACITY = 300, 24, 2
FIGURES: dict[str, Any] = {}


def _queued(db_path: str) -> tuple[int, int]:
    db = sqlite3.connect(db_path)
    try:
        queued = db.execute("SELECT COUNT(*) FROM work_items WHERE state = 'queued'").fetchone()[0]
        load = db.execute("SELECT COALESCE(SUM(load_count), 0) FROM agents").fetchone()[0]
        return int(queued), int(load)
    finally:
        db.close()


class EmbeddedRaceTests(unittest.TestCase):
    timeout = 300

    @inlineCallbacks
    def test_assignment_race_embedded(self) -> Any:
        """300 conversations, 24 agents of capacity 2 (a quarter flapping
        offline/online) on one embedded node: never over capacity, each
        assigned exactly once, queue drained, every load back to 0."""
        server = yield start_server(self, workflow={"default_capacity": CAPACITY},
                                    chat={"frame_rate": 100000.0, "frame_burst": 100000},
                                    auth={"handshake_rate": 100000.0, "handshake_burst": 100000})
        crew, convs = yield run_race([server.port], CONVERSATIONS, AGENTS, CAPACITY)
        yield server.server.get_background().wait()
        path = server.config.database_url()[len("sqlite:///"):]
        queued, load = _queued(path)
        FIGURES["embedded"] = check_race(self, crew, convs, queued, lifecycle_logs(path))
        self.assertEqual(load, 0)
        print("\nrace embedded:", FIGURES["embedded"])


class RedisRaceTests(unittest.TestCase):
    timeout = 300

    skip = REDIS_SKIP

    @inlineCallbacks
    def test_assignment_race_two_gateways_redis(self) -> Any:
        """The same race over two gateway processes in Redis mode (events
        appended through the Redis Lua append, decisions under the SQL
        lock row): never over capacity, each assigned once, queue drained."""
        cluster = Cluster(self)
        cluster.env.update({"SUPPORTCHAT_WORKFLOW_DEFAULT_CAPACITY": str(CAPACITY),
                            "SUPPORTCHAT_AUTH_HANDSHAKE_RATE": "100000", "SUPPORTCHAT_AUTH_HANDSHAKE_BURST": "100000"})
        a = yield cluster.gateway("node-a")
        b = yield cluster.gateway("node-b")
        yield cluster.persister("persister")
        crew, convs = yield run_race([a.port, b.port], CONVERSATIONS, AGENTS, CAPACITY)
        for _ in range(100):
            queued, load = _queued(cluster.data_dir + "/supportchat.db")
            if load == 0:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        path = cluster.data_dir + "/supportchat.db"
        for _ in range(100):  # the persister flushes the last events
            logs = lifecycle_logs(path)
            if all((logs.get(c) or [""])[-1] == "closed" for c in convs) and cluster.backlog() == 0:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        FIGURES["redis"] = check_race(self, crew, convs, queued, logs)
        self.assertEqual(load, 0)
        print("\nrace redis:", FIGURES["redis"])
