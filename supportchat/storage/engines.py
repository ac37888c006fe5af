"""What differs between SQL engines: driver, parameter style, upserts, pragmas."""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from urllib.parse import urlsplit


class Engine:
    """Base engine: SQL is written with ``?`` placeholders."""

    name = "base"
    module_name = ""
    single_writer = False

    def convert(self, sql: str) -> str:
        return sql

    def insert_ignore(self, table: str, columns: str, values: str) -> str:
        raise NotImplementedError

    def for_update(self) -> str:
        return ""

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def on_connect(self, conn: Any) -> None:
        """Per-connection setup run in the pool thread."""

    def describe(self) -> str:
        """The URL with any password removed, for messages."""
        raise NotImplementedError


class SqliteEngine(Engine):
    """SQLite in WAL mode. One connection serialises all SQL, which avoids
    SQLITE_BUSY lock upgrades; group commit keeps throughput up."""

    name = "sqlite"
    module_name = "sqlite3"
    single_writer = True

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous.upper()

    def insert_ignore(self, table: str, columns: str, values: str) -> str:
        return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})"

    def connect_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        return (self.path,), {"check_same_thread": False, "timeout": 30.0}

    def on_connect(self, conn: Any) -> None:
        cur = conn.cursor()
        if self.path != ":memory:":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={self.synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"


def redact_url(url: str) -> str:
    """The URL with the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class UnsupportedDatabase(Exception):
    pass


def engine_from_url(url: str, synchronous: str = "FULL") -> Engine:
    """Pick the engine for a database URL."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            path = path[2:]
        if not path:
            raise UnsupportedDatabase("sqlite URL names no file")
        return SqliteEngine(path, synchronous)
    raise UnsupportedDatabase(
        f"{redact_url(url)}: only sqlite is available in this version"
    )


__all__ = ["Engine", "SqliteEngine", "engine_from_url", "redact_url", "sqlite3"]
