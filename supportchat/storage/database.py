"""The one door to SQL: ``Database.run_interaction(desc, fn, *args)``.

``fn`` (named ``*_txn`` by convention) runs in a pool thread with a cursor
and must never touch the reactor. Schema changes are numbered migrations in
``storage/migrations`` with the applied version recorded in ``schema_version``.
"""

from __future__ import annotations

import re
import time
from functools import partial
from importlib import resources
from typing import Any, Callable, Concatenate, Generic, ParamSpec, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python import context
from twisted.python.threadpool import ThreadPool

from supportchat.storage.engines import DatabaseClosed, Engine

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


class RowSkipped(Exception):
    """An insert-ignore skipped a row that was checked to be new: another
    writer (a persister, another node, another process on one SQLite file)
    took its unique slot, e.g. a conversation's seq, between our read and
    our insert. The transaction must not commit (an ack for a row that was
    never written would be a lost message); the caller retries."""


def insert_every(cur: Cursor, sql: str, rows: list[tuple[Any, ...]], what: str) -> None:
    """``executemany`` an insert-ignore whose rows must all be written."""
    cur.executemany(sql, rows)
    if rows and cur.rowcount != len(rows):
        raise RowSkipped(f"{len(rows) - cur.rowcount} of {len(rows)} {what} rows clashed with another writer")


class SchemaError(Exception):
    """The database schema cannot be used by this code."""


MIGRATION_NAME = re.compile(r"^(\d+)_([a-z0-9_]+)(?:\.([a-z]+))?\.sql$")


def _migrations(engine: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package,
    as ``engine`` runs it.

    Naming: ``NNN_name.sql`` is shared by every engine; ``NNN_name.<engine>.sql``
    (engine: sqlite, postgresql, mysql) replaces it for that engine. A
    version may exist only as overrides, one per engine."""
    shared: dict[int, tuple[str, str]] = {}
    override: dict[int, tuple[str, str]] = {}
    folder = resources.files("supportchat.storage") / "migrations"
    for entry in folder.iterdir():
        m = MIGRATION_NAME.match(entry.name)
        if not m:
            continue
        version, variant = int(m.group(1)), m.group(3)
        if variant is None:
            shared[version] = (entry.name, entry.read_text("utf-8"))
        elif variant == engine:
            override[version] = (entry.name, entry.read_text("utf-8"))
    out = []
    for version in sorted(set(shared) | set(override)):
        name, sql = override.get(version) or shared[version]
        out.append((version, name, sql))
    return out


def latest_version(engine: str = "sqlite") -> int:
    return max(v for v, _, _ in _migrations(engine))


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script: split at ``;`` ending a line, except
    inside ``BEGIN ... END;`` bodies (SQLite triggers)."""
    statements: list[str] = []
    current: list[str] = []
    in_block = False
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        upper = stripped.upper()
        if not in_block and upper.endswith("BEGIN"):
            in_block = True
            continue
        if in_block:
            if upper in ("END;", "END"):
                in_block = False
                statements.append("\n".join(current).rstrip().rstrip(";"))
                current = []
            continue
        if stripped.endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";").strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s.strip()]


class _Job:
    """One call for a pool thread. Twisted's ``callInThreadWithCallback``
    wraps each call in a closure that refers to itself: a reference cycle
    per SQL transaction that only the garbage collector frees, in passes of
    tens of milliseconds on a busy node (docs/benchmarks.md, issue 13).
    This holds no reference to itself and drops what it holds once run."""

    __slots__ = ("ctx", "call", "on_result")

    def __init__(self, ctx: Any, call: Callable[[], Any], on_result: Callable[[bool, Any], object] | None) -> None:
        self.ctx = ctx
        self.call = call
        self.on_result = on_result

    def __call__(self) -> None:
        call, self.call = self.call, _nothing
        try:
            result = context.call(self.ctx, call)
            ok = True
        except BaseException:
            result = Failure()
            ok = False
        on_result, self.on_result = self.on_result, None
        self.ctx = None
        if on_result is not None:
            on_result(ok, result)
        elif not ok:
            log.failure("database pool call failed", result)


def _nothing() -> None:
    return None


class _ThreadPool(ThreadPool):
    """Twisted's thread pool, queueing :class:`_Job` objects."""

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        if self.joined:
            return
        ctx = context.theContextTracker.currentContext().contexts[-1]
        self._team.do(_Job(ctx, partial(func, *args, **kw), onResult))


class _Pool(adbapi.ConnectionPool):
    """``ConnectionPool`` whose reconnect path is quiet: a dropped connection
    is discarded and reported as :class:`adbapi.ConnectionLost` (the
    caller retries), not logged as an error twice per failure. Its threads
    take :class:`_Job` calls (no reference cycle per transaction)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # ConnectionPool starts its pool at once when the reactor is already
        # running (callWhenRunning): swap that one for ours, started alike.
        original, self.threadpool = self.threadpool, _ThreadPool(self.min, self.max)
        if original.started:
            original.stop()
            self.threadpool.start()

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        conn = self.connectionFactory(self)
        trans = self.transactionFactory(self, conn)
        try:
            result = interaction(trans, *args, **kw)
            trans.close()
            conn.commit()
            return result
        except BaseException:
            try:
                _quiet_rollback(self, conn)
            except adbapi.ConnectionLost:
                pass
            raise


def _quiet_rollback(pool: adbapi.ConnectionPool, conn: Any) -> None:
    """Roll back; if the connection is dead, drop it from the pool so this
    thread reconnects on its next interaction."""
    try:
        conn._connection.rollback()
        curs = conn._connection.cursor()
        curs.execute(pool.good_sql)
        curs.fetchall()
        curs.close()
        conn._connection.commit()
        return
    except BaseException:
        pass
    try:
        pool.disconnect(conn._connection)
    except BaseException:
        pass
    raise adbapi.ConnectionLost()


class _Attempts(Generic[R]):
    """One interaction on the pool, attempted again after a transient
    failure until ``retry_for`` has passed; ``out`` fires with the outcome.

    A class rather than two closures that call each other: such closures
    form a reference cycle, which kept every finished interaction (and the
    batch of messages it wrote) alive until the garbage collector's next
    pass, and collecting ~50,000 such objects at once stalled the reactor
    for 40-80 ms every few seconds (docs/benchmarks.md, issue 13)."""

    def __init__(self, db: "Database", desc: str, wrapped: Callable[[Any], R]) -> None:
        self.db = db
        self.desc = desc
        self.wrapped = wrapped
        self.first = db._reactor.seconds()
        self.out: Deferred[R] = Deferred()
        self.attempt(0.05)

    def attempt(self, delay: float) -> None:
        pool = self.db._pool
        if pool is None:
            self.out.errback(Failure(DatabaseClosed("database closed")))
            return
        d: Deferred[R] = pool.runInteraction(self.wrapped)
        d.addCallbacks(self.out.callback, self.retry, errbackArgs=(delay,))

    def retry(self, reason: Failure, delay: float) -> None:
        db, engine = self.db, self.db.engine
        elapsed = db._reactor.seconds() - self.first
        if (db._pool is None or reason.value is None or not engine.is_transient(reason.value)
                or elapsed + delay > db.retry_for):
            self.out.errback(reason)
            return
        db.retries += 1
        log.warn(
            "{desc}: transient failure of {db} ({error}); retrying in {delay:.2f}s",
            desc=self.desc, db=engine.describe(), error=type(reason.value).__name__, delay=delay,
        )
        db._reactor.callLater(delay, self.attempt, min(delay * 2, 2.0))


class Database:
    """An ``adbapi.ConnectionPool`` on the injected reactor, or (for unit
    tests and the admin commands) a threadless variant that runs each
    interaction inline on one connection.

    Transient failures (a dropped connection, a deadlock) make the pooled
    variant run the interaction again, after a short back-off, until
    ``retry_for`` seconds have passed since the first attempt. Every
    ``*_txn`` function is written so that running it again is safe: reads,
    absolute writes, and appends keyed on a ``msg_id`` chosen before the
    first attempt.
    """

    def __init__(
        self,
        engine: Engine,
        reactor: Any,
        pool_size: int = 4,
        threadless: bool = False,
        retry_for: float = 30.0,
    ) -> None:
        self.engine = engine
        self._reactor = reactor
        self._threadless = threadless
        self._conn: Any = None
        self._pool: adbapi.ConnectionPool | None = None
        self.stats: dict[str, list[float]] = {}
        self.retries = 0
        self.retry_for = retry_for
        size = 1 if engine.single_writer else pool_size
        self._pool_size = size

    @property
    def latest_version(self) -> int:
        return latest_version(self.engine.name)

    def start(self) -> None:
        if self._threadless:
            self._conn = self.engine.connect()
            return
        args, kwargs = self.engine.connect_args()
        self._pool = _Pool(
            self.engine.module_name,
            *args,
            cp_min=1,
            cp_max=self._pool_size,
            cp_reactor=self._reactor,
            cp_openfun=self.engine.on_connect,
            cp_reconnect=True,
            cp_noisy=False,
            cp_good_sql="SELECT 1",
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
                return fail(DatabaseClosed("database not started"))
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
            return fail(DatabaseClosed("database not started"))
        return _Attempts(self, desc, wrapped).out

    def _record(self, desc: str, seconds: float) -> None:
        self.stats.setdefault(desc, []).append(seconds)
        if len(self.stats[desc]) > 100:
            del self.stats[desc][:50]

    # -- schema --------------------------------------------------------
    def schema_version(self) -> "Deferred[int]":
        return self.run_interaction("schema_version", _schema_version_txn)

    def migrate(self) -> "Deferred[int]":
        """Apply pending migrations; returns the resulting version."""
        d = self.run_interaction("migrate", _migrate_txn, _migrations(self.engine.name))

        def applied(result: tuple[int, list[str]]) -> int:
            version, names = result
            for name in names:
                log.info("Applied migration {name}", name=name)
            return version

        return d.addCallback(applied)


def _schema_version_txn(cur: Cursor) -> int:
    cur.execute(cur.engine.table_exists_sql(), ("schema_version",))
    if cur.fetchone() is None:
        return 0
    cur.execute("SELECT version FROM schema_version")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _migrate_txn(cur: Cursor, migrations: list[tuple[int, str, str]]) -> tuple[int, list[str]]:
    cur.engine.lock_migrations(cur)
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
        # (MySQL commits DDL implicitly, so the version is recorded after
        # each migration rather than once at the end.)
        cur.execute("UPDATE schema_version SET version = ?", (version,))
        applied.append(name)
        current = version
    return current, applied


def _blocking(engine: Engine, fn: Callable[[Cursor], R]) -> R:
    conn = engine.connect()
    try:
        raw = conn.cursor()
        try:
            result = fn(Cursor(engine, raw))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            raw.close()
        return result
    finally:
        conn.close()


def migrate_blocking(engine: Engine) -> tuple[int, list[str]]:
    """Apply pending migrations with a direct connection. Only for start-up
    (before the reactor runs) and the admin command. Raises
    :class:`DatabaseUnavailable` or :class:`SchemaError` with a clear message."""
    migrations = _migrations(engine.name)
    return _blocking(engine, lambda cur: _migrate_txn(cur, migrations))


def check_schema_blocking(engine: Engine) -> int:
    """The schema version, if this code can run on it; otherwise
    :class:`SchemaError` saying what to do."""
    version = _blocking(engine, _schema_version_txn)
    latest = latest_version(engine.name)
    if version > latest:
        raise SchemaError(
            f"database schema version {version} is newer than this code knows ({latest}); upgrade supportchat"
        )
    if version < latest:
        raise SchemaError(
            f"database schema is at version {version} but this code needs {latest}, and"
            " [database] auto_migrate is off; run `supportchat-admin migrate --config FILE`"
            " (with the same configuration), then start the server"
        )
    return version
