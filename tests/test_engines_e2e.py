"""The end-to-end protocol tests (real sockets, real Autobahn client) and
the process tests (kill -9, SIGTERM) once more on PostgreSQL and on
MariaDB; on SQLite they run in tests/test_websocket.py and
tests/test_process.py."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from supportchat.storage.engines import engine_from_url
from tests import dbs
from tests import test_process as process
from tests import test_websocket as websocket


def clean_database(kind: str) -> str:
    """This run's database on the ``kind`` server, emptied (skip if unreachable)."""
    reason = dbs.unreachable(kind)
    if reason:
        raise unittest.SkipTest(reason)
    url = dbs.shared_database(kind)
    dbs.clean(engine_from_url(url))
    return url


class PostgresProtocolTests(websocket.ProtocolTests):
    def server_sections(self) -> dict[str, Any]:
        return {"database": {"url": clean_database("postgresql")}}


class MariadbProtocolTests(websocket.ProtocolTests):
    def server_sections(self) -> dict[str, Any]:
        return {"database": {"url": clean_database("mysql")}}


class PostgresProcessTests(process.ProcessTests):
    def server_env(self) -> dict[str, str]:
        if not hasattr(self, "_url"):
            self._url = clean_database("postgresql")
        return {"SUPPORTCHAT_DATABASE_URL": self._url}


class MariadbProcessTests(process.ProcessTests):
    def server_env(self) -> dict[str, str]:
        if not hasattr(self, "_url"):
            self._url = clean_database("mysql")
        return {"SUPPORTCHAT_DATABASE_URL": self._url}
