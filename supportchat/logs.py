"""Log observers for twistd: ``twistd --logger supportchat.logs.json_observer``
writes one JSON object per line to standard output.

Nothing in supportchat logs message bodies or tokens: events carry ids and
counts only, and the HTTP access log drops query strings."""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def json_observer() -> FileLogObserver:
    """Structured JSON lines on stdout (for log shippers)."""
    return jsonFileLogObserver(sys.stdout)
