"""Throw-away PostgreSQL and MariaDB databases for tests.

Each test process creates uniquely named databases
(``supportchat_test_<pid>_<random>``) on the shared servers and drops them
when it exits; databases left behind by a process that no longer exists
are dropped on the way. The servers are found at the URLs below (override
with ``SUPPORTCHAT_TEST_PG_ADMIN_URL`` / ``SUPPORTCHAT_TEST_MYSQL_ADMIN_URL``);
a test that needs one is skipped, with the reason, only when the server
cannot be reached.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
from typing import Any, Callable

from supportchat.storage.database import Database
from supportchat.storage.engines import Engine, MysqlEngine, PostgresEngine, engine_from_url

PG_ADMIN_URL = os.environ.get("SUPPORTCHAT_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("SUPPORTCHAT_TEST_MYSQL_ADMIN_URL", "mysql://root@127.0.0.1:3306/mysql")
PREFIX = "supportchat_test_"
TABLES = ("messages", "participants", "idempotency_keys", "conversations", "attachments", "webhook_endpoints",
          "webhook_cursors", "webhook_deliveries", "webhook_outbox", "webhook_outbox_state", "work_items",
          "work_notes", "customer_profiles", "email_subscriptions", "email_outbox")

_unreachable: dict[str, str | None] = {}
_shared: dict[str, str] = {}


def _admin(kind: str) -> Any:
    """An autocommit admin connection to the shared server."""
    if kind == "postgresql":
        import psycopg

        engine = PostgresEngine(PG_ADMIN_URL)
        args, kwargs = engine.connect_args()
        kwargs["connect_timeout"] = 3
        return psycopg.connect(*args, autocommit=True, **kwargs)
    import pymysql

    engine2 = MysqlEngine(MYSQL_ADMIN_URL)
    args, kwargs = engine2.connect_args()
    kwargs.update(autocommit=True, connect_timeout=3)
    return pymysql.connect(*args, **kwargs)


def unreachable(kind: str) -> str | None:
    """Why the ``kind`` server cannot be used, or None if it can."""
    if kind not in _unreachable:
        try:
            conn = _admin(kind)
            conn.close()
            _unreachable[kind] = None
        except Exception as e:
            url = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
            _unreachable[kind] = f"{kind} server at {url} is not reachable: {e}"
    return _unreachable[kind]


def _drop_stale(conn: Any, kind: str) -> None:
    cur = conn.cursor()
    if kind == "postgresql":
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'supportchat\\_test\\_%'")
    else:
        cur.execute("SHOW DATABASES LIKE 'supportchat\\_test\\_%'")
    for (name,) in cur.fetchall():
        m = re.match(PREFIX + r"(\d+)_", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _drop(conn, kind, name)
    cur.close()


def _drop(conn: Any, kind: str, name: str) -> None:
    cur = conn.cursor()
    if kind == "postgresql":
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    cur.close()


def create_database(kind: str) -> tuple[str, Callable[[], None]]:
    """A new empty database on the ``kind`` server: (url, drop)."""
    name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    conn = _admin(kind)
    try:
        _drop_stale(conn, kind)
        cur = conn.cursor()
        if kind == "postgresql":
            cur.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        else:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        cur.close()
    finally:
        conn.close()
    base = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
    engine = engine_from_url(base)
    assert isinstance(engine, (PostgresEngine, MysqlEngine))
    url = engine.with_database(name).url
    dropped = []

    def drop() -> None:
        if dropped:
            return
        dropped.append(True)
        admin = _admin(kind)
        try:
            _drop(admin, kind, name)
        finally:
            admin.close()

    return url, drop


def shared_database(kind: str) -> str:
    """This process's migrated database on the ``kind`` server, created on
    first use and dropped at exit. Tests empty it with :func:`clean`."""
    if kind not in _shared:
        url, drop = create_database(kind)
        atexit.register(drop)
        from supportchat.storage.database import migrate_blocking

        migrate_blocking(engine_from_url(url))
        _shared[kind] = url
    return _shared[kind]


def clean(engine: Engine) -> None:
    """Delete every row (the schema stays)."""
    conn = engine.connect()
    try:
        cur = conn.cursor()
        for table in TABLES:
            cur.execute(f"DELETE FROM {table}")
        cur.close()
        conn.commit()
    finally:
        conn.close()


def threadless_db(testcase: Any, kind: str) -> Database:
    """A clean, migrated database of ``kind`` run inline on the test thread
    (skips the test when the server is unreachable)."""
    from twisted.trial.unittest import SkipTest

    if kind == "sqlite":
        from supportchat.storage.engines import SqliteEngine

        db = Database(SqliteEngine(testcase.mktemp() + ".db"), reactor=None, threadless=True)
        db.start()
        testcase.addCleanup(db.close)
        testcase.successResultOf(db.migrate())
        return db
    reason = unreachable(kind)
    if reason:
        raise SkipTest(reason)
    engine = engine_from_url(shared_database(kind))
    clean(engine)
    db = Database(engine, reactor=None, threadless=True)
    db.start()
    testcase.addCleanup(db.close)
    return db


class StoreContract:
    """What every store contract mixin shares: a fresh ``self.store`` from
    ``make_store()`` per test, and ``ok(d)`` for the result of a Deferred
    that has already fired (threadless databases and twins run inline)."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store()

    def ok(self, d: Any) -> Any:
        return self.successResultOf(d)  # type: ignore[attr-defined]

