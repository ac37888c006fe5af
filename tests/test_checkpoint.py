"""WAL checkpoints off the commit path (supportchat/storage/checkpoint.py)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from supportchat.app.services import build_service
from supportchat.config import Config
from supportchat.server import SupportChatServer
from supportchat.storage.checkpoint import WalCheckpointer
from supportchat.storage.engines import SqliteEngine


def _writer(engine: SqliteEngine) -> sqlite3.Connection:
    conn = sqlite3.connect(engine.path, isolation_level=None)
    engine.on_connect(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    return conn


def _write(conn: sqlite3.Connection, rows: int) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(2000),) for _ in range(rows)])
    conn.execute("COMMIT")


class CheckpointerTests(TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "chat.db")
        os.makedirs(os.path.dirname(self.path))

    def checkpointer(self, engine: SqliteEngine, **kw: Any) -> WalCheckpointer:
        seen: list[tuple[float, int]] = []
        c = WalCheckpointer(reactor, engine.checkpoint_connection, 3600.0,
                            lambda s, p: seen.append((s, p)), **kw)
        c.seen = seen  # type: ignore[attr-defined]
        c.startService()
        self.addCleanup(c.stopService)
        return c

    def test_commits_never_checkpoint_with_background_checkpoints(self) -> None:
        """With background checkpoints the writer connection has automatic
        checkpoints off, so a commit never copies the WAL itself; without,
        SQLite's default (every 1,000 pages) applies."""
        on = _writer(SqliteEngine(self.path, background_checkpoints=True))
        self.addCleanup(on.close)
        self.assertEqual(on.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 0)
        _write(on, 3000)  # ~1,500+ pages: past the default threshold
        wal = os.path.getsize(self.path + "-wal")
        self.assertGreater(wal, 1000 * 4096, "the WAL was checkpointed inside a commit")
        off = _writer(SqliteEngine(self.path + "2"))
        self.addCleanup(off.close)
        self.assertEqual(off.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 1000)

    @inlineCallbacks
    def test_tick_copies_the_wal_into_the_database(self) -> Any:
        """A tick checkpoints on the service's own connection: the pages the
        writer left in the WAL reach the database file, and the observer
        hears how many there were."""
        engine = SqliteEngine(self.path, background_checkpoints=True)
        writer = _writer(engine)
        self.addCleanup(writer.close)
        _write(writer, 500)
        before = os.path.getsize(self.path)
        c = self.checkpointer(engine)
        yield c.tick()
        self.assertEqual(c.checkpoints, 1)
        pages = c.seen[0][1]  # type: ignore[attr-defined]
        self.assertGreater(pages, 200)
        self.assertGreater(os.path.getsize(self.path), before + 200 * 4096)
        # Everything was copied: a second checkpoint finds nothing new to do.
        busy, log_pages, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.assertEqual((busy, log_pages), (0, done))

    @inlineCallbacks
    def test_large_wal_is_restarted(self) -> Any:
        """Under steady load the writer appends during every checkpoint, so
        a PASSIVE one never empties the WAL and it would grow for ever: when
        it found restart_pages or more, a RESTART checkpoint follows at once
        (the writer then starts the WAL over); below that, PASSIVE only."""
        executed: list[str] = []
        sizes = iter([5000, 0, 10])

        class Recorder:
            def execute(self, sql: str) -> "Recorder":
                executed.append(sql)
                self.row = (0, next(sizes), 0)
                return self

            def fetchone(self) -> tuple[int, int, int]:
                return self.row

            def close(self) -> None:
                executed.append("close")

        c = WalCheckpointer(reactor, lambda: Recorder(), 3600.0, restart_pages=4000)  # type: ignore[arg-type,return-value]
        c.startService()
        self.addCleanup(c.stopService)
        yield c.tick()
        yield c.tick()
        self.assertEqual(executed, ["PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(RESTART)",
                                    "PRAGMA wal_checkpoint(PASSIVE)"])

    @inlineCallbacks
    def test_stop_waits_for_the_running_checkpoint(self) -> Any:
        """Stopping while a checkpoint runs waits for it, then closes the
        connection and the thread; a tick after that starts nothing."""
        engine = SqliteEngine(self.path, background_checkpoints=True)
        writer = _writer(engine)
        self.addCleanup(writer.close)
        _write(writer, 200)
        c = WalCheckpointer(reactor, engine.checkpoint_connection, 3600.0)
        c.startService()
        running = c.tick()
        self.assertIsNotNone(running)
        self.assertIsNone(c.tick(), "a second checkpoint started while one runs")
        yield c.stopService()
        self.assertEqual(c.checkpoints, 1)
        self.assertIsNone(c.tick())


class ServiceTreeTests(TestCase):
    def service_names(self, **database: Any) -> list[str]:
        config = Config()
        config.server.data_dir = self.mktemp()
        for k, v in database.items():
            setattr(config.database, k, v)
        server = SupportChatServer(reactor, config)
        return [s.name for s in build_service(server)]  # type: ignore[attr-defined]

    def test_sqlite_node_runs_the_checkpointer_after_the_database(self) -> None:
        """A node on SQLite starts the checkpointer right after the database
        (and so stops it before the database closes); with the interval at 0
        there is none and SQLite checkpoints inside commits as before."""
        names = self.service_names()
        self.assertEqual(names[names.index("database") + 1], "sqlite-checkpoint")
        self.assertNotIn("sqlite-checkpoint", self.service_names(sqlite_checkpoint_interval=0))

    def test_redis_mode_checkpoints_only_where_the_persister_writes(self) -> None:
        """In Redis mode the persister's process writes the messages to SQL
        and runs the checkpointer; a gateway-only worker (it only reads)
        neither runs one nor turns SQLite's own checkpoints off."""
        from supportchat.server import ROLES_ALL

        def server(roles: tuple[str, ...]) -> SupportChatServer:
            config = Config()
            config.server.data_dir = self.mktemp()
            config.redis.url = "redis://127.0.0.1:6379/0"
            return SupportChatServer(reactor, config, roles)

        self.assertIsNotNone(server(ROLES_ALL).get_checkpointer())
        worker = server(("gateway",))
        self.assertIsNone(worker.get_checkpointer())
        engine = worker.get_database().engine
        assert isinstance(engine, SqliteEngine)
        self.assertFalse(engine.background_checkpoints)
