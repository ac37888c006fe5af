"""What differs between SQL engines: driver, connection arguments, parameter
style, insert-ignore, row locks, full-text search, transient errors.

SQL elsewhere is written once, with ``?`` placeholders; the engine converts
it. Everything dialect-specific lives here or in per-engine migrations
(``NNN_name.<engine>.sql``).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.enterprise import adbapi


class UnsupportedDatabase(Exception):
    """The URL names no engine we can use, or is malformed."""


class DatabaseUnavailable(Exception):
    """The database server cannot be reached or refused us; the message
    names the URL with its password redacted."""


class DatabaseClosed(RuntimeError):
    """The database is not started, or already closed (shutting down)."""


def redact_url(url: str) -> str:
    """The URL with the password replaced by ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def convert_placeholders(sql: str) -> str:
    """``?`` -> ``%s`` outside quoted literals, with literal ``%`` doubled
    (psycopg and PyMySQL both use the ``format`` style)."""
    if "'" not in sql and '"' not in sql and "`" not in sql and "%" not in sql:
        return sql.replace("?", "%s")  # the common case, without a loop in Python
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"', "`"):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class Engine:
    """Base engine: SQL is written with ``?`` placeholders."""

    name = "base"
    module_name = ""
    single_writer = False

    def convert(self, sql: str) -> str:
        return sql

    def insert_ignore(self, table: str, columns: str, values: str, key: str | None = None) -> str:
        """An INSERT that silently skips a row whose ``key`` (a unique
        column list; any unique key when None) already exists."""
        raise NotImplementedError

    def for_update(self) -> str:
        """Suffix that row-locks what a SELECT reads until commit."""
        return ""

    # ``values_table`` works, in joins and in ``update_values`` (one
    # statement for many rows; storage/bulk.py).
    update_from_values = False

    def values_table(self, names: list[str], rows: int) -> str:
        """A derived table of ``rows`` rows of placeholders whose columns are
        ``names``, aliased ``v``."""
        raise NotImplementedError

    def update_values(self, table: str, sets: str, values: str, where: str) -> str:
        """UPDATE ``table`` from the rows of the derived table ``values``
        (``v``) that meet ``where``."""
        return f"UPDATE {table} SET {sets} FROM {values} WHERE {where}"

    # Many rows travel as one array parameter per column (``values_rows``,
    # ``in_list``), not one placeholder per value: a statement's text stays
    # short and the same for any number of rows, so neither the driver nor
    # the server parses thousands of placeholders per batch (PostgreSQL).
    array_rows = False

    def values_rows(self, names: list[str], rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """A derived table ``v`` whose columns are ``names`` holding
        ``rows``, and its parameters."""
        return self.values_table(names, len(rows)), [x for row in rows for x in row]

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` over ``values``, and its parameters."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def insert_ignore_select(self, table: str, columns: str, select: str, key: str) -> str:
        """``insert_ignore`` of the rows a SELECT returns (array_rows engines)."""
        raise NotImplementedError

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def on_connect(self, conn: Any) -> None:
        """Per-connection setup run in the pool thread."""

    def describe(self) -> str:
        """The URL with any password removed, for messages."""
        raise NotImplementedError

    def connect(self) -> Any:
        """A direct DB-API connection (start-up checks, admin commands)."""
        args, kwargs = self.connect_args()
        try:
            conn = __import__(self.module_name).connect(*args, **kwargs)
        except Exception as e:
            raise DatabaseUnavailable(f"cannot connect to {self.describe()}: {_one_line(e)}") from None
        self.on_connect(conn)
        return conn

    def is_transient(self, error: BaseException) -> bool:
        """True for failures worth retrying the whole transaction for: a
        dropped connection, a deadlock, a serialisation failure."""
        return isinstance(error, adbapi.ConnectionLost)

    def _module(self) -> Any:
        """The driver module if it is loaded (if not, none of its errors exist)."""
        return sys.modules.get(self.module_name)

    def is_outage(self, error: BaseException) -> bool:
        """True when the database failed, not the statement: unreachable,
        connection dropped, locked, shut down, out of space. Every request
        of a group commit would fail alike, so all get ``unavailable``.
        False when a statement failed for what it carried (see
        :meth:`is_bad_data`) or for a bug: the batch's requests are then
        retried one by one, so only the culprit fails."""
        if isinstance(error, (adbapi.ConnectionLost, DatabaseUnavailable, DatabaseClosed)) or self.is_transient(error):
            return True
        module = self._module()
        return module is not None and isinstance(error, (module.OperationalError, module.InterfaceError))

    def is_bad_data(self, error: BaseException) -> bool:
        """True when a statement failed for a value it carried: text the
        driver cannot encode, a number beyond the column type, a value too
        long, a constraint. Coming from a client, that is a client error."""
        if isinstance(error, (UnicodeError, OverflowError, ValueError)):
            return True
        module = self._module()
        return module is not None and isinstance(error, (module.DataError, module.IntegrityError))

    def lock_migrations(self, cur: Any) -> None:
        """Serialise concurrent ``migrate`` runs (several nodes starting)."""

    def table_exists_sql(self) -> str:
        """A query with one ``?`` (a table name) returning a row if it exists."""
        return (
            "SELECT 1 FROM information_schema.tables WHERE table_name = ?"
            " AND table_schema = " + self.current_schema
        )

    current_schema = "current_schema()"

    def fts_match(self) -> tuple[str, str]:
        """(FROM-clause addition, WHERE condition) selecting messages ``m``
        whose body matches the one ``?`` parameter (the user's query)."""
        raise NotImplementedError

    def fts_query(self, text: str) -> str:
        """The user's search words in this engine's query syntax."""
        return text


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the -wal file keeps when it starts over


class SqliteEngine(Engine):
    """SQLite in WAL mode. One connection serialises all SQL, which avoids
    SQLITE_BUSY lock upgrades; group commit keeps throughput up."""

    name = "sqlite"
    module_name = "sqlite3"
    single_writer = True

    def __init__(self, path: str, synchronous: str = "FULL", background_checkpoints: bool = False) -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        # True when a WalCheckpointer (storage/checkpoint.py) checkpoints
        # on its own connection: commits then never run one themselves.
        self.background_checkpoints = background_checkpoints and path != ":memory:"

    def insert_ignore(self, table: str, columns: str, values: str, key: str | None = None) -> str:
        return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})"

    update_from_values = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE ... FROM

    def values_table(self, names: list[str], rows: int) -> str:
        # SQLite names a VALUES list's columns column1, column2, ...
        cols = ", ".join(f"column{i + 1} AS {n}" for i, n in enumerate(names))
        one = "(" + ", ".join("?" * len(names)) + ")"
        return f"(SELECT {cols} FROM (VALUES {', '.join([one] * rows)})) AS v"

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        return (self.path,), {"check_same_thread": False, "timeout": 30.0}

    def on_connect(self, conn: Any) -> None:
        cur = conn.cursor()
        if self.path != ":memory:":
            cur.execute("PRAGMA journal_mode=WAL")
        if self.background_checkpoints:
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.execute(f"PRAGMA synchronous={self.synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    def checkpoint_connection(self) -> sqlite3.Connection:
        """A connection for the WalCheckpointer's thread (it only checkpoints)."""
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA cache_size = -64")  # it copies pages once: no page cache worth keeping
        return conn

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def table_exists_sql(self) -> str:
        return "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return True
        return super().is_transient(error)

    def is_outage(self, error: BaseException) -> bool:
        # sqlite3.InterfaceError is about a value (a parameter it cannot bind).
        if isinstance(error, (adbapi.ConnectionLost, DatabaseClosed, DatabaseUnavailable, sqlite3.OperationalError)):
            return True
        return self.is_transient(error)

    def is_bad_data(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.InterfaceError) or super().is_bad_data(error)

    def fts_match(self) -> tuple[str, str]:
        return (
            " JOIN messages_fts ON messages_fts.rowid = m.rowid",
            "messages_fts MATCH ?",
        )

    def fts_query(self, text: str) -> str:
        # Each word as a quoted FTS5 string: no operator injection, all must match.
        words = [w.replace('"', '""') for w in text.split()]
        return " ".join(f'"{w}"' for w in words)


class _ServerEngine(Engine):
    """Common to client/server engines: URL parsing and ``%s`` placeholders."""

    default_port = 0
    scheme = ""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UnsupportedDatabase(f"{redact_url(url)}: {e}") from None
        self.host = parts.hostname or "127.0.0.1"
        self.port = port or self.default_port
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.database = unquote(parts.path.lstrip("/"))
        if not self.database:
            raise UnsupportedDatabase(f"{redact_url(url)}: the URL names no database (add /NAME)")
        self.options = dict(parse_qsl(parts.query, keep_blank_values=True))

    def convert(self, sql: str) -> str:
        return convert_placeholders(sql)

    def for_update(self) -> str:
        return " FOR UPDATE"

    def describe(self) -> str:
        return redact_url(self.url)

    def with_database(self, name: str) -> "_ServerEngine":
        """The same server and credentials, another database."""
        parts = urlsplit(self.url)
        return type(self)(parts._replace(path="/" + name).geturl())


class PostgresEngine(_ServerEngine):
    """PostgreSQL through psycopg 3 (DB-API 2, threadsafety 2: one
    connection per adbapi pool thread is fine).

    Isolation is PostgreSQL's default READ COMMITTED: every statement sees
    what was committed before it started, so reads made after taking a row
    lock see the previous lock holder's writes.
    """

    name = "postgresql"
    module_name = "psycopg"
    default_port = 5432
    # Passed through from the URL query to libpq.
    LIBPQ_OPTIONS = (
        "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword",
        "connect_timeout", "application_name", "target_session_attrs", "options",
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        unknown = sorted(set(self.options) - set(self.LIBPQ_OPTIONS))
        if unknown:
            raise UnsupportedDatabase(
                f"{redact_url(url)}: unknown option(s) {', '.join(unknown)}; known: {', '.join(self.LIBPQ_OPTIONS)}"
            )

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.database}
        if self.user:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        kwargs["connect_timeout"] = 10
        kwargs["application_name"] = "supportchat"
        kwargs.update(self.options)
        return (), kwargs

    def insert_ignore(self, table: str, columns: str, values: str, key: str | None = None) -> str:
        target = f" ({key})" if key else ""
        return f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT{target} DO NOTHING"

    update_from_values = True

    def values_table(self, names: list[str], rows: int) -> str:
        one = "(" + ", ".join("?" * len(names)) + ")"
        return f"(VALUES {', '.join([one] * rows)}) AS v ({', '.join(names)})"

    array_rows = True

    def values_rows(self, names: list[str], rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        columns = [list(c) for c in zip(*rows)]
        arrays = ", ".join(f"?::{_pg_array_type(c)}" for c in columns)
        return f"unnest({arrays}) AS v ({', '.join(names)})", list(columns)

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::{_pg_array_type(values)})", [list(values)]

    def insert_ignore_select(self, table: str, columns: str, select: str, key: str) -> str:
        return f"INSERT INTO {table} ({columns}) {select} ON CONFLICT ({key}) DO NOTHING"

    def is_transient(self, error: BaseException) -> bool:
        import psycopg

        # OperationalError covers a lost connection, admin shutdown,
        # deadlock and serialisation failure (TransactionRollback).
        if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
            return True
        return super().is_transient(error)

    def lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7391820001)")
        cur.fetchone()

    def fts_match(self) -> tuple[str, str]:
        return "", "m.body_tsv @@ websearch_to_tsquery('simple', ?)"


# MySQL client error codes worth a retry: server gone away, lost connection,
# connection refused/unknown host during reconnect, deadlock, lock wait timeout.
MYSQL_TRANSIENT = {2003, 2006, 2013, 2055, 1205, 1213, 1927, 1053}
# Server errors that mean the database failed, not the statement: too many
# connections, access denied, network errors, read-only, disk or table full
# (every client error, 2000 and up, too). PyMySQL raises OperationalError
# for these and also for some value errors (1366 incorrect string value).
MYSQL_OUTAGE = MYSQL_TRANSIENT | {1021, 1040, 1044, 1045, 1049, 1114, 1152, 1153, 1158, 1159, 1160, 1161, 1290,
                                  1792, 1836}
# OperationalErrors about a value: incorrect string/datetime value, bad character.
MYSQL_BAD_VALUE = {1292, 1300, 1366, 1367}


def _pg_array_type(values: Sequence[Any]) -> str:
    """The PostgreSQL array type for a column of Python values."""
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int}:
        return "bigint[]"
    if kinds and kinds <= {int, float}:
        return "float8[]"
    return "text[]"


class MysqlEngine(_ServerEngine):
    """MySQL and MariaDB through PyMySQL (pure Python, DB-API 2).

    Sessions run at READ COMMITTED (InnoDB's REPEATABLE READ would keep the
    first snapshot of the transaction, so a read after a row lock could miss
    the previous lock holder's commit)."""

    name = "mysql"
    module_name = "pymysql"
    default_port = 3306
    current_schema = "DATABASE()"
    SSL_OPTIONS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity", "ssl_disabled")
    OTHER_OPTIONS = ("connect_timeout", "charset", "unix_socket")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        unknown = sorted(set(self.options) - set(self.SSL_OPTIONS) - set(self.OTHER_OPTIONS))
        if unknown:
            known = ", ".join(self.SSL_OPTIONS + self.OTHER_OPTIONS)
            raise UnsupportedDatabase(f"{redact_url(url)}: unknown option(s) {', '.join(unknown)}; known: {known}")

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "host": self.host, "port": self.port, "database": self.database,
            "charset": self.options.get("charset", "utf8mb4"), "autocommit": False,
            "connect_timeout": int(self.options.get("connect_timeout", "10")),
        }
        if self.user:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        if "unix_socket" in self.options:
            kwargs["unix_socket"] = self.options["unix_socket"]
        ssl: dict[str, Any] = {}
        for key in ("ssl_ca", "ssl_cert", "ssl_key"):
            if self.options.get(key):
                ssl[key[len("ssl_"):]] = self.options[key]
        if ssl or _truthy(self.options.get("ssl_verify_cert")):
            kwargs["ssl"] = ssl
        for key in ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled"):
            if key in self.options:
                kwargs[key] = _truthy(self.options[key])
        return (), kwargs

    def on_connect(self, conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.close()
        conn.commit()

    def insert_ignore(self, table: str, columns: str, values: str, key: str | None = None) -> str:
        return f"INSERT IGNORE INTO {table} ({columns}) VALUES ({values})"

    update_from_values = True

    def values_table(self, names: list[str], rows: int) -> str:
        # A union of one-row SELECTs: MySQL and MariaDB spell a VALUES table
        # differently, both take this.
        first = "SELECT " + ", ".join(f"? AS {n}" for n in names)
        other = " UNION ALL SELECT " + ", ".join("?" * len(names))
        return f"({first}{other * (rows - 1)}) AS v"

    def update_values(self, table: str, sets: str, values: str, where: str) -> str:
        # A multi-table UPDATE. Its assignments run in no set order: each must
        # read only the values and the column it assigns.
        return f"UPDATE {table} JOIN {values} ON {where} SET {sets}"

    def is_transient(self, error: BaseException) -> bool:
        import pymysql

        if isinstance(error, pymysql.err.InterfaceError):
            return True  # (0, '') : the connection is already closed
        if isinstance(error, pymysql.err.OperationalError):
            code = error.args[0] if error.args else None
            return code in MYSQL_TRANSIENT
        return super().is_transient(error)

    def is_outage(self, error: BaseException) -> bool:
        import pymysql

        if isinstance(error, pymysql.err.OperationalError):
            code = error.args[0] if error.args else None
            return not isinstance(code, int) or code >= 2000 or code in MYSQL_OUTAGE
        return super().is_outage(error)

    def is_bad_data(self, error: BaseException) -> bool:
        import pymysql

        if isinstance(error, pymysql.err.OperationalError):
            return bool(error.args) and error.args[0] in MYSQL_BAD_VALUE
        return super().is_bad_data(error)

    def lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT GET_LOCK('supportchat_migrate', 60)")
        cur.fetchone()

    def fts_match(self) -> tuple[str, str]:
        return "", "MATCH (m.body) AGAINST (? IN BOOLEAN MODE)"

    def fts_query(self, text: str) -> str:
        # Every word required; operators in the user's text are dropped.
        words = ["".join(c for c in w if c.isalnum() or c in "_'") for w in text.split()]
        return " ".join(f"+{w}" for w in words if w)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on", "required")


def engine_from_url(url: str, synchronous: str = "FULL", background_checkpoints: bool = False) -> Engine:
    """Pick the engine for a database URL."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            path = path[2:]
        if not path:
            raise UnsupportedDatabase("sqlite URL names no file")
        return SqliteEngine(path, synchronous, background_checkpoints)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(url)
    if url.startswith(("mysql://", "mariadb://")):
        return MysqlEngine(url)
    raise UnsupportedDatabase(
        f"{redact_url(url)}: unknown scheme; use sqlite:///PATH, postgresql://... or mysql://..."
    )


__all__ = [
    "DatabaseClosed", "DatabaseUnavailable", "Engine", "MysqlEngine", "PostgresEngine", "SqliteEngine",
    "UnsupportedDatabase", "convert_placeholders", "engine_from_url", "redact_url", "sqlite3",
]
