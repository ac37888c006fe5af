"""The one door to SQL: ``Database.run_interaction(desc, fn, *args)``.

``fn`` (named ``*_txn`` by convention) runs in a pool thread with a cursor
and must never touch the reactor. Schema changes are numbered migrations in
``storage/migrations`` with the applied version recorded in ``schema_version``.
"""

from __future__ import annotations

import re
import time
from importlib import resources
from typing import Any, Callable, Concatenate, ParamSpec, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from supportchat.storage.engines import Engine

P = ParamSpec("P")
R = TypeVar("R")

log = Logger()


class Cursor:
    """A cursor that converts ``?`` placeholders for the engine."""

    def __init__(self, engine: Engine, txn: Any) -> None:
        self.engine = engine
        self._txn = txn

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> None:
        self._txn.execute(self.engine.convert(sql), tuple(args))

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._txn.executemany(self.engine.convert(sql), rows)

    def fetchone(self) -> Any:
        return self._txn.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._txn.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._txn.rowcount)


class SchemaError(Exception):
    """The database schema cannot be used by this code."""


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package."""
    out = []
    folder = resources.files("supportchat.storage") / "migrations"
    for entry in folder.iterdir():
        m = re.match(r"^(\d+)_([a-z0-9_]+)\.sql$", entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text("utf-8")))
    out.sort()
    return out


def _split_sql(script: str) -> list[str]:
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Database:
    """An ``adbapi.ConnectionPool`` on the injected reactor, or (for unit
    tests) a threadless variant that runs each interaction inline."""

    def __init__(self, engine: Engine, reactor: Any, pool_size: int = 4, threadless: bool = False) -> None:
        self.engine = engine
        self._reactor = reactor
        self._threadless = threadless
        self._conn: Any = None
        self._pool: adbapi.ConnectionPool | None = None
        self.stats: dict[str, list[float]] = {}
        size = 1 if engine.single_writer else pool_size
        self._pool_size = size

    @property
    def latest_version(self) -> int:
        return max(v for v, _, _ in _migrations())

    def start(self) -> None:
        if self._threadless:
            args, kwargs = self.engine.connect_args()
            mod = __import__(self.engine.module_name)
            self._conn = mod.connect(*args, **kwargs)
            self.engine.on_connect(self._conn)
            return
        args, kwargs = self.engine.connect_args()
        self._pool = adbapi.ConnectionPool(
            self.engine.module_name,
            *args,
            cp_min=1,
            cp_max=self._pool_size,
            cp_reactor=self._reactor,
            cp_openfun=self.engine.on_connect,
            cp_reconnect=True,
            cp_noisy=False,
            **kwargs,
        )
        self._pool.start()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run_interaction(
        self,
        desc: str,
        fn: Callable[Concatenate[Cursor, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> "Deferred[R]":
        """Run ``fn(cursor, *args)`` in one transaction; commit on return,
        roll back on exception."""
        engine = self.engine

        def wrapped(txn: Any) -> R:
            start = time.perf_counter()
            try:
                return fn(Cursor(engine, txn), *args, **kwargs)
            finally:
                # Only timing, never arguments: they may hold message bodies.
                self._record(desc, time.perf_counter() - start)

        if self._threadless:
            if self._conn is None:
                return fail(RuntimeError("database not started"))
            cur = self._conn.cursor()
            try:
                result = wrapped(cur)
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                return fail()
            finally:
                cur.close()
            return succeed(result)
        if self._pool is None:
            return fail(RuntimeError("database not started"))
        d: Deferred[R] = self._pool.runInteraction(wrapped)
        return d

    def _record(self, desc: str, seconds: float) -> None:
        self.stats.setdefault(desc, []).append(seconds)
        if len(self.stats[desc]) > 100:
            del self.stats[desc][:50]

    # -- schema --------------------------------------------------------
    def schema_version(self) -> "Deferred[int]":
        return self.run_interaction("schema_version", _schema_version_txn)

    def migrate(self) -> "Deferred[int]":
        """Apply pending migrations; returns the resulting version."""
        d = self.run_interaction("migrate", _migrate_txn, _migrations())

        def applied(result: tuple[int, list[str]]) -> int:
            version, names = result
            for name in names:
                log.info("Applied migration {name}", name=name)
            return version

        return d.addCallback(applied)


def _schema_version_txn(cur: Cursor) -> int:
    try:
        cur.execute("SELECT version FROM schema_version")
    except Exception:
        return 0
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _migrate_txn(cur: Cursor, migrations: list[tuple[int, str, str]]) -> tuple[int, list[str]]:
    cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    cur.execute("SELECT version FROM schema_version")
    row = cur.fetchone()
    current = int(row[0]) if row else 0
    if row is None:
        cur.execute("INSERT INTO schema_version (version) VALUES (0)")
    known = max((v for v, _, _ in migrations), default=0)
    if current > known:
        raise SchemaError(
            f"database schema version {current} is newer than this code knows ({known}); upgrade supportchat"
        )
    applied = []
    for version, name, sql in migrations:
        if version <= current:
            continue
        for statement in _split_sql(sql):
            cur.execute(statement)
        cur.execute("UPDATE schema_version SET version = ?", (version,))
        applied.append(name)
        current = version
    return current, applied



def migrate_blocking(engine: Engine) -> tuple[int, list[str]]:
    """Apply pending migrations with a direct connection. Only for start-up
    (before the reactor runs) and the admin command."""
    args, kwargs = engine.connect_args()
    conn = __import__(engine.module_name).connect(*args, **kwargs)
    try:
        engine.on_connect(conn)
        raw = conn.cursor()
        try:
            result = _migrate_txn(Cursor(engine, raw), _migrations())
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            raw.close()
        return result
    finally:
        conn.close()
