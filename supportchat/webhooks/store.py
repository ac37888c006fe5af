"""Endpoints, cursors and delivery attempts in SQL (migration 012).

Events are not copied anywhere: the dispatcher reads them from the
``messages`` table after a per endpoint and conversation cursor
(``delivered_seq``), so the append path writes nothing for webhooks. Only
log entries at or after the endpoint's ``since_ts`` (its registration, or
an earlier replay point) are events for it.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import Message
from supportchat.storage.rows import MSG_COLS, msg_from_row

EP_COLS = ("id, url, events, description, secret, old_secret, old_secret_until, paused, paused_reason, since_ts, "
           "created_at")
DELIVERY_COLS = ("id, endpoint_id, event_id, event_type, conversation_id, seq, attempt, ts, outcome, status_code, "
                 "latency, error, response_excerpt")


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    events: tuple[str, ...]
    description: str
    secret: str
    old_secret: str | None
    old_secret_until: float | None
    paused: bool
    paused_reason: str | None
    since_ts: float
    created_at: float

    def secrets(self, now: float) -> list[str]:
        """The secrets that sign now: the current one, and the previous one
        until its grace period ends."""
        out = [self.secret]
        if self.old_secret and self.old_secret_until is not None and now < self.old_secret_until:
            out.append(self.old_secret)
        return out

    def to_wire(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id, "url": self.url, "events": list(self.events), "description": self.description,
            "paused": self.paused, "paused_reason": self.paused_reason, "created_at": self.created_at,
            "previous_secret_valid_until": self.old_secret_until
            if self.old_secret_until is not None and now < self.old_secret_until else None,
        }


@dataclass(frozen=True)
class Attempt:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    conversation_id: str
    seq: int
    attempt: int
    ts: float
    outcome: str  # delivered, failed, dead, refused, gone
    status_code: int | None = None
    latency: float | None = None
    error: str | None = None
    response_excerpt: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "event_id": self.event_id, "type": self.event_type, "conversation": self.conversation_id,
            "seq": self.seq, "attempt": self.attempt, "ts": self.ts, "outcome": self.outcome,
            "status_code": self.status_code, "latency": self.latency, "error": self.error,
            "response_excerpt": self.response_excerpt,
        }


@dataclass(frozen=True)
class Pending:
    """A conversation with log entries this endpoint has not had yet."""

    conversation_id: str
    delivered_seq: int
    attempts: int
    first_failed_at: float | None


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


_counter = itertools.count()


def attempt_id(now: float) -> str:
    """Sortable by time: microseconds, then this process's counter (attempts
    in the same microsecond keep their order), then randomness; in hex."""
    return f"{int(now * 1_000_000):014x}{next(_counter) % 16**8:08x}{os.urandom(4).hex()}"


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row[0], url=row[1], events=tuple(json.loads(row[2])), description=row[3], secret=row[4],
        old_secret=row[5], old_secret_until=None if row[6] is None else float(row[6]), paused=bool(row[7]),
        paused_reason=row[8], since_ts=float(row[9]), created_at=float(row[10]),
    )


def _attempt(row: Any) -> Attempt:
    return Attempt(
        id=row[0], endpoint_id=row[1], event_id=row[2], event_type=row[3], conversation_id=row[4], seq=int(row[5]),
        attempt=int(row[6]), ts=float(row[7]), outcome=row[8], status_code=None if row[9] is None else int(row[9]),
        latency=None if row[10] is None else float(row[10]), error=row[11], response_excerpt=row[12],
    )


def _set_cursor_txn(cur: Cursor, endpoint_id: str, conversation_id: str, delivered_seq: int, attempts: int,
                    first_failed_at: float | None, next_at: float | None) -> None:
    cur.execute(
        "UPDATE webhook_cursors SET delivered_seq = ?, attempts = ?, first_failed_at = ?, next_at = ? "
        "WHERE endpoint_id = ? AND conversation_id = ?",
        (delivered_seq, attempts, first_failed_at, next_at, endpoint_id, conversation_id))
    if cur.rowcount == 0:  # (not for an endpoint deleted meanwhile)
        cur.execute(
            "INSERT INTO webhook_cursors (endpoint_id, conversation_id, delivered_seq, attempts, first_failed_at, "
            "next_at) SELECT id, ?, ?, ?, ?, ? FROM webhook_endpoints WHERE id = ?",
            (conversation_id, delivered_seq, attempts, first_failed_at, next_at, endpoint_id))


def _insert_attempt_txn(cur: Cursor, a: Attempt) -> None:
    cur.execute(  # (not for an endpoint deleted meanwhile)
        f"INSERT INTO webhook_deliveries ({DELIVERY_COLS}) SELECT ?, id, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
        "FROM webhook_endpoints WHERE id = ?",
        (a.id, a.event_id, a.event_type, a.conversation_id, a.seq, a.attempt, a.ts, a.outcome,
         a.status_code, a.latency, a.error, a.response_excerpt, a.endpoint_id))


class SqlWebhookStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- endpoints (admin REST) --

    def add(self, endpoint: Endpoint) -> "Deferred[None]":
        def txn(cur: Cursor) -> None:
            e = endpoint
            cur.execute(f"INSERT INTO webhook_endpoints ({EP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.id, e.url, json.dumps(list(e.events)), e.description, e.secret, e.old_secret,
                         e.old_secret_until, int(e.paused), e.paused_reason, e.since_ts, e.created_at))
        return self._db.run_interaction("webhook_add", txn)

    def get(self, endpoint_id: str) -> "Deferred[Endpoint | None]":
        def txn(cur: Cursor) -> Endpoint | None:
            cur.execute(f"SELECT {EP_COLS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            row = cur.fetchone()
            return None if row is None else _endpoint(row)
        return self._db.run_interaction("webhook_get", txn)

    def endpoints(self) -> "Deferred[list[Endpoint]]":
        def txn(cur: Cursor) -> list[Endpoint]:
            cur.execute(f"SELECT {EP_COLS} FROM webhook_endpoints ORDER BY created_at, id")
            return [_endpoint(r) for r in cur.fetchall()]
        return self._db.run_interaction("webhook_list", txn)

    def update(self, endpoint: Endpoint, pause: bool = True) -> "Deferred[None]":
        """Store an admin's change. ``since_ts`` is the replay's, and the
        pause state (unless ``pause``) the dispatcher's: neither is
        overwritten from an older read."""
        def txn(cur: Cursor) -> None:
            e = endpoint
            cur.execute(
                "UPDATE webhook_endpoints SET url = ?, events = ?, description = ?, secret = ?, old_secret = ?, "
                "old_secret_until = ? WHERE id = ?",
                (e.url, json.dumps(list(e.events)), e.description, e.secret, e.old_secret, e.old_secret_until, e.id))
            if pause:
                cur.execute("UPDATE webhook_endpoints SET paused = ?, paused_reason = ? WHERE id = ?",
                            (int(e.paused), e.paused_reason, e.id))
        return self._db.run_interaction("webhook_update", txn)

    def purge_attempts(self, before: float) -> "Deferred[int]":
        """Forget delivery attempts recorded before ``before``."""
        def txn(cur: Cursor) -> int:
            cur.execute("DELETE FROM webhook_deliveries WHERE ts < ?", (before,))
            return cur.rowcount
        return self._db.run_interaction("webhook_purge_attempts", txn)

    def pause(self, endpoint_id: str, reason: str) -> "Deferred[None]":
        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE webhook_endpoints SET paused = 1, paused_reason = ? WHERE id = ?",
                        (reason, endpoint_id))
        return self._db.run_interaction("webhook_pause", txn)

    def delete(self, endpoint_id: str) -> "Deferred[bool]":
        def txn(cur: Cursor) -> bool:
            cur.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            found = cur.rowcount > 0
            cur.execute("DELETE FROM webhook_cursors WHERE endpoint_id = ?", (endpoint_id,))
            cur.execute("DELETE FROM webhook_outbox_state WHERE endpoint_id = ?", (endpoint_id,))
            cur.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
            return found
        return self._db.run_interaction("webhook_delete", txn)

    def attempts(self, endpoint_id: str, limit: int, before: str | None = None) -> "Deferred[list[Attempt]]":
        """Newest first; ``before`` an attempt id (the next page)."""
        def txn(cur: Cursor) -> list[Attempt]:
            if before:
                cur.execute(f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE endpoint_id = ? AND id < ? "
                            "ORDER BY id DESC LIMIT ?", (endpoint_id, before, limit))
            else:
                cur.execute(f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE endpoint_id = ? "
                            "ORDER BY id DESC LIMIT ?", (endpoint_id, limit))
            return [_attempt(r) for r in cur.fetchall()]
        return self._db.run_interaction("webhook_attempts", txn)

    def replay(self, endpoint_id: str, since: str | float) -> "Deferred[float | None]":
        """Move the endpoint's cursors back so that the events after event id
        ``since`` (a string), or at or after timestamp ``since`` (a number),
        are sent again. The replay point as a timestamp, or None when the
        event id is unknown."""
        def txn(cur: Cursor) -> float | None:
            anchor: tuple[str, int] | None = None
            if isinstance(since, str):
                if not since.startswith("evt_"):
                    return None
                cur.execute("SELECT conversation_id, seq, ts FROM messages WHERE msg_id = ?", (since[4:],))
                row = cur.fetchone()
                if row is not None:
                    anchor, ts = (row[0], int(row[1])), float(row[2])
                else:
                    cur.execute("SELECT created_at FROM webhook_outbox WHERE event_id = ?", (since,))
                    found = cur.fetchone()
                    if found is None:
                        return None
                    ts = float(found[0])
            else:
                ts = float(since)
            cur.execute("SELECT conversation_id, MIN(seq) FROM messages WHERE ts >= ? GROUP BY conversation_id",
                        (ts,))
            starts = {r[0]: int(r[1]) - 1 for r in cur.fetchall()}
            if anchor is not None:
                starts[anchor[0]] = anchor[1]
            cur.execute("SELECT conversation_id, delivered_seq FROM webhook_cursors WHERE endpoint_id = ?",
                        (endpoint_id,))
            current = {r[0]: int(r[1]) for r in cur.fetchall()}
            for conversation_id, start in starts.items():
                # Due at once (next_at 0), so the dispatcher finds it however old
                # its last activity; without a cursor nothing of it was settled:
                # from the beginning (entries before since_ts are skipped).
                if conversation_id not in current:
                    _set_cursor_txn(cur, endpoint_id, conversation_id, 0, 0, None, 0.0)
                else:
                    _set_cursor_txn(cur, endpoint_id, conversation_id, min(start, current[conversation_id]), 0,
                                    None, 0.0)
            cur.execute("DELETE FROM webhook_outbox_state WHERE endpoint_id = ? AND event_id IN "
                        "(SELECT event_id FROM webhook_outbox WHERE created_at >= ? AND event_id <> ?)",
                        (endpoint_id, ts, since if isinstance(since, str) else ""))
            cur.execute("UPDATE webhook_endpoints SET since_ts = ? WHERE id = ? AND since_ts > ?",
                        (ts, endpoint_id, ts))
            return ts
        return self._db.run_interaction("webhook_replay", txn)

    # -- the dispatcher --

    def pending(self, endpoint: Endpoint, now: float, limit: int, active_since: float = 0.0
                ) -> "Deferred[list[Pending]]":
        """Conversations with entries after the endpoint's cursor that may go
        now: those whose retry is due (or that a replay sent back), then those
        active since ``active_since`` (and the endpoint's ``since_ts``) with
        no retry waiting. Both reads use an index: the first the cursors'
        ``next_at``, the second ``conversations.last_ts``, so a caller that
        passes a recent ``active_since`` does not walk every conversation
        the endpoint ever had."""
        def txn(cur: Cursor) -> list[Pending]:
            cur.execute(
                "SELECT w.conversation_id, w.delivered_seq, w.attempts, w.first_failed_at "
                "FROM webhook_cursors w JOIN conversations c ON c.id = w.conversation_id "
                "WHERE w.endpoint_id = ? AND w.next_at <= ? AND c.last_seq > w.delivered_seq "
                "ORDER BY w.next_at LIMIT ?", (endpoint.id, now, limit))
            rows = list(cur.fetchall())
            cur.execute(
                "SELECT c.id, COALESCE(w.delivered_seq, 0), COALESCE(w.attempts, 0), w.first_failed_at "
                "FROM conversations c LEFT JOIN webhook_cursors w "
                "ON w.endpoint_id = ? AND w.conversation_id = c.id "
                "WHERE c.last_ts >= ? AND c.last_seq > COALESCE(w.delivered_seq, 0) "
                "AND w.next_at IS NULL ORDER BY c.last_ts LIMIT ?",
                (endpoint.id, max(endpoint.since_ts, active_since), limit))
            rows += cur.fetchall()
            seen: set[str] = set()
            out = []
            for r in rows[:limit]:
                if r[0] not in seen:
                    seen.add(r[0])
                    out.append(Pending(r[0], int(r[1]), int(r[2]), None if r[3] is None else float(r[3])))
            return out
        return self._db.run_interaction("webhook_pending", txn)

    def entries(self, conversation_id: str, after_seq: int, since_ts: float, limit: int) -> "Deferred[list[Message]]":
        def txn(cur: Cursor) -> list[Message]:
            cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ? "
                        "ORDER BY seq LIMIT ?", (conversation_id, after_seq, limit))
            # Entries before since_ts are skipped (not events for this endpoint) but still move the cursor.
            return [msg_from_row(r) for r in cur.fetchall()]
        return self._db.run_interaction("webhook_entries", txn)

    def advance(self, endpoint_id: str, conversation_id: str, seq: int,
                attempt: Attempt | None = None) -> "Deferred[None]":
        """The cursor past ``seq`` (delivered, dead, or not an event for this
        endpoint), with the attempt that settled it."""
        def txn(cur: Cursor) -> None:
            if attempt is not None:
                _insert_attempt_txn(cur, attempt)
            _set_cursor_txn(cur, endpoint_id, conversation_id, seq, 0, None, None)
        return self._db.run_interaction("webhook_advance", txn)

    def failed(self, attempt: Attempt, delivered_seq: int, attempts: int, first_failed_at: float,
               next_at: float) -> "Deferred[None]":
        """A failed attempt; the conversation waits until ``next_at``."""
        def txn(cur: Cursor) -> None:
            _insert_attempt_txn(cur, attempt)
            _set_cursor_txn(cur, attempt.endpoint_id, attempt.conversation_id, delivered_seq, attempts,
                            first_failed_at, next_at)
        return self._db.run_interaction("webhook_failed", txn)

    def record(self, attempt: Attempt) -> "Deferred[None]":
        return self._db.run_interaction("webhook_record", lambda cur: _insert_attempt_txn(cur, attempt))


@dataclass(frozen=True)
class OutboxEvent:
    """An event of the outbox (a note, a rating) with this endpoint's retry state."""

    event_id: str
    event_type: str
    conversation_id: str
    created_at: float
    body: bytes
    attempts: int
    first_failed_at: float | None
    subject: str = ""


def _set_outbox_state_txn(cur: Cursor, endpoint_id: str, event_id: str, done: bool, attempts: int,
                          first_failed_at: float | None, next_at: float | None) -> None:
    cur.execute("UPDATE webhook_outbox_state SET done = ?, attempts = ?, first_failed_at = ?, next_at = ? "
                "WHERE endpoint_id = ? AND event_id = ?",
                (int(done), attempts, first_failed_at, next_at, endpoint_id, event_id))
    if cur.rowcount == 0:
        cur.execute("INSERT INTO webhook_outbox_state (endpoint_id, event_id, done, attempts, first_failed_at, "
                    "next_at) SELECT id, ?, ?, ?, ?, ? FROM webhook_endpoints WHERE id = ?",
                    (event_id, int(done), attempts, first_failed_at, next_at, endpoint_id))


class SqlOutbox:
    """The endpoint-side view of ``webhook_outbox`` (storage/outbox.py writes it)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def pending(self, endpoint: Endpoint, now: float, limit: int) -> "Deferred[list[OutboxEvent]]":
        """Subscribed events since the endpoint's ``since_ts`` not yet settled
        for it, oldest first; those waiting for a retry included (the
        dispatcher holds back the later events of their conversation)."""
        def txn(cur: Cursor) -> list[OutboxEvent]:
            types = list(endpoint.events)
            marks = ", ".join("?" for _ in types)
            cur.execute(
                "SELECT o.event_id, o.event_type, o.conversation_id, o.created_at, o.body, "
                "COALESCE(s.attempts, 0), s.first_failed_at, s.next_at, o.subject FROM webhook_outbox o "
                "LEFT JOIN webhook_outbox_state s ON s.endpoint_id = ? AND s.event_id = o.event_id "
                f"WHERE o.created_at >= ? AND o.event_type IN ({marks}) AND (s.done IS NULL OR s.done = 0) "
                "ORDER BY o.created_at, o.event_id LIMIT ?",
                (endpoint.id, endpoint.since_ts, *types, limit))
            out = []
            for r in cur.fetchall():
                body = r[4] if isinstance(r[4], bytes) else str(r[4]).encode("utf-8")
                waiting = r[7] is not None and float(r[7]) > now
                out.append(OutboxEvent(r[0], r[1], r[2], float(r[3]), body, -1 if waiting else int(r[5]),
                                       None if r[6] is None else float(r[6]), r[8] or ""))
            return out
        return self._db.run_interaction("webhook_outbox_pending", txn)

    def settle(self, endpoint_id: str, event_id: str, attempt: Attempt | None, done: bool, attempts: int = 0,
               first_failed_at: float | None = None, next_at: float | None = None) -> "Deferred[None]":
        def txn(cur: Cursor) -> None:
            if attempt is not None:
                _insert_attempt_txn(cur, attempt)
            _set_outbox_state_txn(cur, endpoint_id, event_id, done, attempts, first_failed_at, next_at)
        return self._db.run_interaction("webhook_outbox_settle", txn)

    def replay(self, endpoint_id: str, since: float) -> "Deferred[None]":
        """Outbox events at or after ``since`` become pending again for the endpoint."""
        def txn(cur: Cursor) -> None:
            cur.execute("DELETE FROM webhook_outbox_state WHERE endpoint_id = ? AND event_id IN "
                        "(SELECT event_id FROM webhook_outbox WHERE created_at >= ?)", (endpoint_id, since))
        return self._db.run_interaction("webhook_outbox_replay", txn)

    def purge(self, before: float) -> "Deferred[int]":
        """Remove outbox events (and their states) created before ``before``."""
        def txn(cur: Cursor) -> int:
            cur.execute("DELETE FROM webhook_outbox_state WHERE event_id IN "
                        "(SELECT event_id FROM webhook_outbox WHERE created_at < ?)", (before,))
            cur.execute("DELETE FROM webhook_outbox WHERE created_at < ?", (before,))
            return cur.rowcount
        return self._db.run_interaction("webhook_outbox_purge", txn)
