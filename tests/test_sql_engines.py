"""The SQL engines themselves: URLs and clear connection errors, the
migration history per engine, auto_migrate, seq safety under concurrent
writers, and retries after a connection dropped mid-transaction."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial import unittest

from supportchat.config import load_config
from supportchat.storage import sql
from supportchat.storage.database import (
    Database,
    SchemaError,
    _migrations,
    _split_sql,
    check_schema_blocking,
    latest_version,
    migrate_blocking,
)
from supportchat.storage.engines import (
    DatabaseUnavailable,
    MysqlEngine,
    PostgresEngine,
    UnsupportedDatabase,
    convert_placeholders,
    engine_from_url,
    redact_url,
)
from supportchat.storage.models import TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore
from tests import dbs
from tests.support import free_port


def need(kind: str) -> None:
    reason = dbs.unreachable(kind)
    if reason:
        raise unittest.SkipTest(reason)


class UrlTests(unittest.SynchronousTestCase):
    def test_postgres_url_parts_and_tls_options(self) -> None:
        """Host, port, user, password (percent-decoded), database and libpq TLS options come from the URL."""
        engine = engine_from_url("postgresql://chat:p%40ss@db.example:6432/support?sslmode=verify-full&sslrootcert=/ca.pem")
        assert isinstance(engine, PostgresEngine)
        _, kwargs = engine.connect_args()
        self.assertEqual(
            {k: kwargs[k] for k in ("host", "port", "user", "password", "dbname", "sslmode", "sslrootcert")},
            {"host": "db.example", "port": 6432, "user": "chat", "password": "p@ss", "dbname": "support",
             "sslmode": "verify-full", "sslrootcert": "/ca.pem"},
        )
        self.assertEqual(engine.describe(), "postgresql://chat:***@db.example:6432/support?sslmode=verify-full&sslrootcert=/ca.pem")

    def test_mysql_url_parts_and_tls_options(self) -> None:
        """MySQL URLs give PyMySQL its host, port, credentials, database, utf8mb4 and ssl settings."""
        engine = engine_from_url("mysql://root:secret@127.0.0.1/chat?ssl_ca=/ca.pem&ssl_verify_cert=true")
        assert isinstance(engine, MysqlEngine)
        _, kwargs = engine.connect_args()
        self.assertEqual((kwargs["host"], kwargs["port"], kwargs["user"], kwargs["password"], kwargs["database"]),
                         ("127.0.0.1", 3306, "root", "secret", "chat"))
        self.assertEqual((kwargs["charset"], kwargs["ssl"], kwargs["ssl_verify_cert"]), ("utf8mb4", {"ca": "/ca.pem"}, True))

    def test_bad_urls_are_refused_clearly(self) -> None:
        """Unknown schemes, options and a missing database name are errors that never show the password."""
        for url, words in [
            ("oracle://u:pw@h/db", "unknown scheme"),
            ("postgresql://u:pw@h/db?sslmod=require", "unknown option(s) sslmod"),
            ("mysql://u:pw@h", "names no database"),
            ("mysql://u:pw@h/db?ssl_cax=1", "unknown option(s) ssl_cax"),
        ]:
            e = self.assertRaises(UnsupportedDatabase, engine_from_url, url)
            self.assertIn(words, str(e))
            self.assertNotIn("pw", str(e).replace("://u:***", ""))

    def test_redact_and_placeholders(self) -> None:
        """Passwords become ***; ? becomes %s outside quotes and % is escaped."""
        self.assertEqual(redact_url("mysql://a:b@c:1/d"), "mysql://a:***@c:1/d")
        self.assertEqual(redact_url("sqlite:///x.db"), "sqlite:///x.db")
        self.assertEqual(
            convert_placeholders("SELECT '?', 5 % 2 FROM t WHERE a = ? AND b LIKE 'x%'"),
            "SELECT '?', 5 %% 2 FROM t WHERE a = %s AND b LIKE 'x%%'",
        )

    def test_config_rejects_a_malformed_server_url(self) -> None:
        """[database] url is checked when the configuration loads."""
        from supportchat.config import ConfigError

        e = self.assertRaises(ConfigError, load_config, None, {}, {"database": {"url": "postgresql://h/db?bogus=1"}})
        self.assertEqual(e.key, "database.url")


class UnreachableTests(unittest.SynchronousTestCase):
    def run_prepare(self, url: str, **database: Any) -> tuple[int, str]:
        from supportchat.tap import prepare_database

        config = load_config(None, environ={}, overrides={"database": {"url": url, **database}})
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, prepare_database, config)
        return int(e.code or 0), err.getvalue()

    def test_unreachable_servers_name_the_redacted_url(self) -> None:
        """Nothing listening: start-up stops with exit 1 and a message naming the URL, password redacted."""
        port = free_port()
        for scheme in ("postgresql", "mysql"):
            code, text = self.run_prepare(f"{scheme}://chat:hunter2@127.0.0.1:{port}/support")
            self.assertEqual(code, 1)
            self.assertIn(f"cannot connect to {scheme}://chat:***@127.0.0.1:{port}/support", text)
            self.assertNotIn("hunter2", text)

    def test_refused_credentials_name_the_redacted_url(self) -> None:
        """A server that refuses the login: exit 1, the URL and the server's reason, no password."""
        need("mysql")
        url = dbs.MYSQL_ADMIN_URL.replace("root@", "supportchat_nobody:wrongpass@")
        code, text = self.run_prepare(url)
        self.assertEqual(code, 1)
        self.assertIn("supportchat_nobody:***@", text)
        self.assertIn("Access denied", text)
        self.assertNotIn("wrongpass", text)


class MigrationHistoryTests(unittest.SynchronousTestCase):
    def test_each_engine_gets_its_overrides(self) -> None:
        """NNN_name.<engine>.sql replaces NNN_name.sql for that engine; every engine has the same versions."""
        names = {e: [n for _, n, _ in _migrations(e)] for e in ("sqlite", "postgresql", "mysql")}
        self.assertEqual(names["sqlite"][:4], ["001_initial.sql", "002_history.sql", "003_search.sqlite.sql",
                                               "004_bot_state.sql"])
        self.assertEqual(names["postgresql"][:4], ["001_initial.sql", "002_history.sql", "003_search.postgresql.sql",
                                                   "004_bot_state.sql"])
        self.assertEqual(names["mysql"][:4], ["001_initial.mysql.sql", "002_history.sql", "003_search.mysql.sql",
                                              "004_bot_state.mysql.sql"])
        self.assertEqual(len({latest_version(e) for e in names}), 1)

    def test_split_keeps_trigger_bodies_whole(self) -> None:
        """Statements split at ';' line ends, but a BEGIN ... END; trigger body stays one statement."""
        script = "-- c\nCREATE TABLE a (x INT);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (1);\n  INSERT INTO b VALUES (2);\nEND;\nSELECT 1;\n"
        parts = _split_sql(script)
        self.assertEqual(len(parts), 3)
        self.assertTrue(parts[1].startswith("CREATE TRIGGER") and parts[1].count("INSERT INTO") == 2)


class MigrationTests(unittest.SynchronousTestCase):
    """On a fresh database of each engine."""

    kind = "sqlite"

    def url(self) -> str:
        if self.kind == "sqlite":
            return "sqlite:///" + self.mktemp() + ".db"
        need(self.kind)
        url, drop = dbs.create_database(self.kind)
        self.addCleanup(drop)
        return url

    def test_migrate_records_the_version_and_is_idempotent(self) -> None:
        """All migrations apply in order, the version is recorded, and a second run applies nothing."""
        engine = engine_from_url(self.url())
        version, applied = migrate_blocking(engine)
        self.assertEqual(version, latest_version(engine.name))
        self.assertEqual(applied, [n for _, n, _ in _migrations(engine.name)])
        self.assertEqual(migrate_blocking(engine), (version, []))
        self.assertEqual(check_schema_blocking(engine), version)

    def test_newer_schema_always_stops(self) -> None:
        """A schema newer than the code stops both migrate and the check, saying to upgrade."""
        engine = engine_from_url(self.url())
        version, _ = migrate_blocking(engine)
        conn = engine.connect()
        cur = conn.cursor()
        cur.execute(engine.convert("UPDATE schema_version SET version = ?"), (version + 1,))
        conn.commit()
        conn.close()
        for fn in (migrate_blocking, check_schema_blocking):
            e = self.assertRaises(SchemaError, fn, engine)
            self.assertIn("newer than this code knows", str(e))

    def test_auto_migrate_off_refuses_an_unmigrated_schema(self) -> None:
        """With auto_migrate off the server refuses to start on an old schema and names the command; after `migrate` it starts."""
        from supportchat.tap import prepare_database

        url = self.url()
        config = load_config(None, environ={}, overrides={"database": {"url": url, "auto_migrate": False}})
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, prepare_database, config)
        self.assertEqual(e.code, 1)
        self.assertIn("schema is at version 0", err.getvalue())
        self.assertIn("supportchat-admin migrate", err.getvalue())
        self.assertEqual(prepare_database(config, migrate=True), latest_version(engine_from_url(url).name))
        self.assertEqual(prepare_database(config), latest_version(engine_from_url(url).name))


class PostgresMigrationTests(MigrationTests):
    kind = "postgresql"


class MariadbMigrationTests(MigrationTests):
    kind = "mysql"


def request(conv: str, sender: str, i: int, prefix: str = "k") -> AppendRequest:
    return AppendRequest(conversation_id=conv, sender_id=sender, sender_role="customer", kind=TEXT,
                         body=f"body {i}", ts=1000.0 + i, client_msg_id=f"{prefix}{i}")


class PostgresServerEngineTests(unittest.TestCase):
    """Real pools (threads, the reactor) on PostgreSQL; MariaDB below."""

    kind = "postgresql"
    timeout = 60

    def setUp(self) -> None:
        need(self.kind)
        self.url = dbs.shared_database(self.kind)
        self.engine = engine_from_url(self.url)
        dbs.clean(self.engine)

    def pool(self, size: int = 2) -> Database:
        db = Database(engine_from_url(self.url), reactor, pool_size=size, retry_for=20.0)
        db.start()
        self.addCleanup(db.close)
        return db

    def stored(self, conv: str) -> list[tuple[str, int, str | None]]:
        conn = self.engine.connect()
        try:
            cur = conn.cursor()
            cur.execute(self.engine.convert(
                "SELECT msg_id, seq, client_msg_id FROM messages WHERE conversation_id = ? ORDER BY seq"), (conv,))
            return [(r[0], int(r[1]), r[2]) for r in cur.fetchall()]
        finally:
            conn.close()

    @inlineCallbacks
    def test_concurrent_writers_get_gapless_unique_seqs(self) -> Any:
        """Four nodes' stores (own pools) appending to one conversation at
        once: every message gets a distinct seq, 1..N without gaps, and
        last_seq and unread agree with the rows."""
        stores = [SqlConversationStore(self.pool(), batch_max=8) for _ in range(4)]
        conv, _ = yield stores[0].open_conversation("cust", 1.0)
        n = 160
        ds = [stores[i % 4].append(request(conv.id, "cust", i)) for i in range(n)]
        results = yield DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        seqs = sorted(r.message.seq for _, r in results)
        self.assertEqual(seqs, list(range(1, n + 1)))
        rows = self.stored(conv.id)
        self.assertEqual([r[1] for r in rows], list(range(1, n + 1)))
        self.assertEqual({r[0] for r in rows}, {r.message.msg_id for _, r in results})
        fresh = yield stores[1].get_conversation(conv.id)
        self.assertEqual(fresh.last_seq, n)
        self.assertGreater(sum(s.batches for s in stores), 4)

    def kill_connection_sql(self) -> tuple[str, str]:
        """(SQL giving this connection's id, SQL killing connection ?)."""
        return "SELECT pg_backend_pid()", "SELECT pg_terminate_backend(?, 5000)"

    @inlineCallbacks
    def test_connection_dropped_mid_transaction_is_retried_not_lost(self) -> Any:
        """The server kills the connection inside a batch transaction (rows
        written, not committed) and again while the pool's connections sit
        idle: the appends are retried on fresh connections, every one is
        acknowledged, and each is stored exactly once, gapless."""
        db = self.pool(size=2)
        store = SqlConversationStore(db, batch_max=16)
        conv, _ = yield store.open_conversation("cust", 1.0)
        first = yield store.append(request(conv.id, "cust", 0))
        own_id_sql, kill_sql = self.kill_connection_sql()
        real = sql.append_batch_txn
        kills: list[Any] = []

        def dropping_batch(cur: Any, requests: list[AppendRequest]) -> Any:
            result = real(cur, requests)
            if not kills:
                cur.execute(own_id_sql)
                victim = cur.fetchone()[0]
                admin = self.engine.connect()
                try:
                    c = admin.cursor()
                    c.execute(self.engine.convert(kill_sql), (victim,))
                    admin.commit()
                finally:
                    admin.close()
                kills.append(victim)
            return result  # the commit that follows fails: the connection is gone

        self.patch(sql, "append_batch_txn", dropping_batch)
        acks = yield DeferredList([store.append(request(conv.id, "cust", i)) for i in range(1, 41)],
                                  fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual(len(kills), 1)
        self.assertGreaterEqual(db.retries, 1)
        # Now kill every idle connection of the pool between transactions.
        yield self.kill_all_pool_connections()
        more = yield DeferredList([store.append(request(conv.id, "cust", i)) for i in range(41, 61)],
                                  fireOnOneErrback=True, consumeErrors=True)
        acked = [first] + [r for _, r in acks] + [r for _, r in more]
        rows = self.stored(conv.id)
        self.assertEqual([r[1] for r in rows], list(range(1, 62)))
        self.assertEqual([r[0] for r in rows], [a.message.msg_id for a in sorted(acked, key=lambda a: a.message.seq)])
        self.assertEqual(sorted(r[2] for r in rows), sorted(f"k{i}" for i in range(61)))
        self.assertFalse(any(a.duplicate for a in acked))

    def kill_all_pool_connections(self) -> Any:
        conn = self.engine.connect()
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            cur.fetchall()
            conn.commit()
        finally:
            conn.close()
        from twisted.internet.defer import succeed

        return succeed(None)


class MariadbServerEngineTests(PostgresServerEngineTests):
    kind = "mysql"

    def kill_connection_sql(self) -> tuple[str, str]:
        return "SELECT CONNECTION_ID()", "KILL CONNECTION ?"

    def kill_all_pool_connections(self) -> Any:
        conn = self.engine.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()")
            for (pid,) in cur.fetchall():
                cur.execute(f"KILL CONNECTION {int(pid)}")
        finally:
            conn.close()
        from twisted.internet.defer import succeed

        return succeed(None)


PG_BIN = "/usr/lib/postgresql/15/bin"


class PrivatePostgres:
    """A throw-away PostgreSQL server in a temp dir on a free port, which a
    test may stop and start (the shared server is never touched)."""

    def __init__(self) -> None:
        import shutil
        import subprocess
        import tempfile

        self._subprocess = subprocess
        if not os.path.exists(os.path.join(PG_BIN, "pg_ctl")):
            raise unittest.SkipTest(f"no PostgreSQL binaries in {PG_BIN}")
        self.root = tempfile.mkdtemp(prefix="supportchat-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise unittest.SkipTest("running as root without runuser: cannot start a private PostgreSQL")
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        self._subprocess.run(
            self.as_user + [os.path.join(PG_BIN, tool), *args],
            check=True, stdout=self._subprocess.DEVNULL, stderr=self._subprocess.DEVNULL, timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        import shutil

        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresRestartTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def test_appends_wait_out_a_server_restart(self) -> Any:
        """The database server goes down (immediate shutdown) with appends in
        flight and comes back: the appends are retried with back-off and
        reconnection, acknowledged only after the restart, and stored once each."""
        from twisted.internet.task import deferLater

        pg = PrivatePostgres()
        self.addCleanup(pg.destroy)
        pg.start()
        engine = engine_from_url(pg.url)
        migrate_blocking(engine)
        db = Database(engine, reactor, pool_size=2, retry_for=60.0)
        db.start()
        self.addCleanup(db.close)
        store = SqlConversationStore(db, batch_max=8)
        conv, _ = yield store.open_conversation("cust", 1.0)
        before = yield DeferredList([store.append(request(conv.id, "cust", i)) for i in range(10)],
                                    fireOnOneErrback=True, consumeErrors=True)
        pg.stop()
        pending = [store.append(request(conv.id, "cust", i)) for i in range(10, 30)]
        while db.retries < 2:
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(any(d.called for d in pending), "acknowledged while the database was down")
        pg.start()
        after = yield DeferredList(pending, fireOnOneErrback=True, consumeErrors=True)
        acked = [r for _, r in before] + [r for _, r in after]
        conn = engine.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT msg_id, seq FROM messages ORDER BY seq")
            rows = [(r[0], int(r[1])) for r in cur.fetchall()]
        finally:
            conn.close()
        self.assertEqual([s for _, s in rows], list(range(1, 31)))
        self.assertEqual(sorted(m for m, _ in rows), sorted(a.message.msg_id for a in acked))
