"""SQL implementations of the storage seams, over :class:`Database`.

Appends are group-committed: while one batch transaction runs, new appends
queue up and go in the next one, so throughput does not fall to one fsync
per message. Each waiter's Deferred fires only after its batch committed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.metrics import Hop, Metrics
from supportchat.storage.append import append_batch_txn
from supportchat.storage.batched import BatchedReads
from supportchat.storage.database import Cursor, Database
from supportchat.storage.rows import CONV_COLS as _CONV_COLS
from supportchat.storage.rows import MSG_COLS as _MSG_COLS
from supportchat.storage.rows import conv_from_row as _conv
from supportchat.storage.rows import msg_from_row as _msg
from supportchat.storage.rows import participants_txn as _participants_txn
from supportchat.storage.models import (
    EVENT,
    AppendRequest,
    AppendResult,
    Conversation,
    IdempotencyRecord,
    Message,
    NotFound,
    Participant,
    SessionState,
    StoreError,
    new_id,
)

log = Logger()


class Unstorable(StoreError):
    """The database refused a value of this request (not an outage)."""

    code = "bad_request"


# -- transaction functions (pool thread) ----------------------------------

def idempotency_lookup_txn(cur: Cursor, sender_id: str, client_msg_id: str, now: float) -> IdempotencyRecord | None:
    cur.execute(
        "SELECT conversation_id, msg_id, seq, ts, expires_at FROM idempotency_keys"
        " WHERE sender_id = ? AND client_msg_id = ?",
        (sender_id, client_msg_id),
    )
    row = cur.fetchone()
    if row is None or float(row[4]) <= now:
        return None
    return IdempotencyRecord(row[0], row[1], int(row[2]), float(row[3]))


def idempotency_record_txn(
    cur: Cursor, sender_id: str, client_msg_id: str, outcome: IdempotencyRecord, expires_at: float, now: float
) -> bool:
    if idempotency_lookup_txn(cur, sender_id, client_msg_id, now) is not None:
        return False
    cur.execute(
        "DELETE FROM idempotency_keys WHERE sender_id = ? AND client_msg_id = ?",
        (sender_id, client_msg_id),
    )
    cur.execute(
        cur.engine.insert_ignore(
            "idempotency_keys",
            "sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at",
            "?, ?, ?, ?, ?, ?, ?",
            "sender_id, client_msg_id",
        ),
        (sender_id, client_msg_id, outcome.conversation_id, outcome.msg_id, outcome.seq, outcome.ts, expires_at),
    )
    return cur.rowcount != 0


def _open_conversation_txn(cur: Cursor, customer_id: str, now: float) -> tuple[Conversation, bool]:
    cur.execute(
        f"SELECT {_CONV_COLS} FROM conversations WHERE customer_id = ? AND status = 'open'"
        " ORDER BY created_at LIMIT 1",
        (customer_id,),
    )
    row = cur.fetchone()
    if row is not None:
        return _conv(row), False
    conv = Conversation(id=new_id("c", now), customer_id=customer_id, status="open", created_at=now)
    cur.execute(
        f"INSERT INTO conversations ({_CONV_COLS}) VALUES (?, ?, ?, ?, 0, NULL, NULL, NULL)",
        (conv.id, conv.customer_id, conv.status, conv.created_at),
    )
    cur.execute(
        "INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
        " VALUES (?, ?, 'customer', ?, 0, 0)",
        (conv.id, customer_id, now),
    )
    return conv, True


def add_participant_txn(cur: Cursor, conversation_id: str, user_id: str, role: str, now: float) -> bool:
    """Add a participant; False if they already were one."""
    cur.execute(
        "SELECT 1 FROM participants WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
    )
    if cur.fetchone() is not None:
        return False
    cur.execute(
        "INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
        " VALUES (?, ?, ?, ?, 0, 0)",
        (conversation_id, user_id, role, now),
    )
    return True


def remove_participant_txn(cur: Cursor, conversation_id: str, user_id: str) -> bool:
    """Remove a participant (an agent transferred away); False if they were not one."""
    cur.execute("DELETE FROM participants WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id))
    return cur.rowcount > 0


def _get_conversation_txn(cur: Cursor, conversation_id: str) -> Conversation | None:
    cur.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE id = ?", (conversation_id,))
    row = cur.fetchone()
    return None if row is None else _conv(row)


def _list_conversations_txn(cur: Cursor, user_id: str) -> list[Conversation]:
    cols = ", ".join("c." + c.strip() for c in _CONV_COLS.split(","))
    cur.execute(
        f"SELECT {cols} FROM conversations c JOIN participants p ON p.conversation_id = c.id"
        " WHERE p.user_id = ? AND c.status = 'open' ORDER BY c.created_at",
        (user_id,),
    )
    return [_conv(r) for r in cur.fetchall()]


def _list_unassigned_txn(cur: Cursor, limit: int) -> list[Conversation]:
    cur.execute(
        f"SELECT {_CONV_COLS} FROM conversations c WHERE c.status = 'open' AND NOT EXISTS"
        " (SELECT 1 FROM participants p WHERE p.conversation_id = c.id AND p.role = 'agent')"
        " ORDER BY c.created_at LIMIT ?",
        (limit,),
    )
    return [_conv(r) for r in cur.fetchall()]


def _get_messages_txn(cur: Cursor, conversation_id: str, after_seq: int, limit: int) -> list[Message]:
    cur.execute(
        f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (conversation_id, after_seq, limit),
    )
    return [_msg(r) for r in cur.fetchall()]


def _get_states_txn(cur: Cursor, user_ids: list[str]) -> dict[str, list[SessionState]]:
    """The open conversations' states of several users at once (the
    ``hello``s asked for together, storage/batched.py)."""
    out: dict[str, list[SessionState]] = {u: [] for u in user_ids}
    marks = ", ".join("?" * len(user_ids))
    cur.execute(
        "SELECT p.user_id, c.id, p.unread, p.last_read_seq, c.last_seq, c.last_msg_id, c.last_ts, c.status"
        " FROM participants p JOIN conversations c ON c.id = p.conversation_id"
        f" WHERE p.user_id IN ({marks}) AND c.status = 'open' ORDER BY p.user_id, c.id",
        tuple(user_ids),
    )
    for r in cur.fetchall():
        out[r[0]].append(SessionState(r[1], int(r[2]), int(r[3]), int(r[4]), r[5],
                                      None if r[6] is None else float(r[6]), r[7]))
    return out


def _read_positions_txn(cur: Cursor, conversation_id: str) -> dict[str, int]:
    cur.execute("SELECT user_id, last_read_seq FROM participants WHERE conversation_id = ?", (conversation_id,))
    return {str(u): int(s) for u, s in cur.fetchall()}


def _mark_read_txn(cur: Cursor, user_id: str, conversation_id: str, seq: int) -> int:
    cur.execute(
        "SELECT c.last_seq FROM participants p JOIN conversations c ON c.id = p.conversation_id"
        " WHERE p.conversation_id = ? AND p.user_id = ?",
        (conversation_id, user_id),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound("no such conversation")
    seq = max(0, min(seq, int(row[0])))
    cur.execute(
        "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq > ? AND sender_id <> ? AND kind <> ?",
        (conversation_id, seq, user_id, EVENT),
    )
    unread = int(cur.fetchone()[0])
    cur.execute(
        "UPDATE participants SET last_read_seq = ?, unread = ? WHERE conversation_id = ? AND user_id = ?",
        (seq, unread, conversation_id, user_id),
    )
    return unread


def _purge_txn(cur: Cursor, now: float) -> int:
    cur.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
    return cur.rowcount


# -- stores (reactor thread) ----------------------------------------------

class SqlIdempotencyStore:
    """Idempotency keys in the ``idempotency_keys`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def lookup(self, sender_id: str, client_msg_id: str, now: float) -> "Deferred[IdempotencyRecord | None]":
        return self._db.run_interaction("idempotency_lookup", idempotency_lookup_txn, sender_id, client_msg_id, now)

    def record(self, sender_id: str, client_msg_id: str, outcome: IdempotencyRecord, expires_at: float) -> "Deferred[bool]":
        return self._db.run_interaction(
            "idempotency_record", idempotency_record_txn, sender_id, client_msg_id, outcome, expires_at, outcome.ts
        )

    def purge(self, now: float) -> "Deferred[int]":
        return self._db.run_interaction("idempotency_purge", _purge_txn, now)


def _timed(result: Any, hop: Hop, started: float) -> Any:
    hop.since(started)
    return result


class SqlConversationStore:
    """Conversations, participants, messages and session state in SQL."""

    def __init__(self, db: Database, batch_max: int = 512, metrics: Metrics | None = None) -> None:
        self._db = db
        self._batch_max = batch_max
        self._queue: list[tuple[AppendRequest, Deferred[AppendResult]]] = []
        # With metrics: when each queued append arrived (parallel to _queue),
        # for append_queue_seconds; each batch is timed for append_commit_seconds.
        self._metrics = metrics
        self._queued_at: list[float] = []
        self._flushing: Deferred[Any] | None = None
        self.batches = 0
        # Batches retried one by one after a failure that was not an outage,
        # and appends refused because the database could not store them.
        self.isolations = 0
        self.unstorable = 0
        # Session states (each hello) asked for together are read together.
        self._states: BatchedReads[str, list[SessionState]] = BatchedReads(
            lambda users: db.run_interaction("get_states", _get_states_txn, users))

    def open_conversation(self, customer_id: str, now: float) -> "Deferred[tuple[Conversation, bool]]":
        return self._db.run_interaction("open_conversation", _open_conversation_txn, customer_id, now)

    def get_conversation(self, conversation_id: str) -> "Deferred[Conversation | None]":
        return self._db.run_interaction("get_conversation", _get_conversation_txn, conversation_id)

    def add_participant(self, conversation_id: str, user_id: str, role: str, now: float) -> "Deferred[bool]":
        return self._db.run_interaction("add_participant", add_participant_txn, conversation_id, user_id, role, now)

    def remove_participant(self, conversation_id: str, user_id: str) -> "Deferred[bool]":
        return self._db.run_interaction("remove_participant", remove_participant_txn, conversation_id, user_id)

    def list_conversations(self, user_id: str) -> "Deferred[list[Conversation]]":
        return self._db.run_interaction("list_conversations", _list_conversations_txn, user_id)

    def list_unassigned(self, limit: int) -> "Deferred[list[Conversation]]":
        return self._db.run_interaction("list_unassigned", _list_unassigned_txn, limit)

    def get_participants(self, conversation_id: str) -> "Deferred[list[Participant]]":
        return self._db.run_interaction("get_participants", _participants_txn, conversation_id)

    def get_messages(self, conversation_id: str, after_seq: int, limit: int) -> "Deferred[list[Message]]":
        return self._db.run_interaction("get_messages", _get_messages_txn, conversation_id, after_seq, limit)

    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]":
        return self._states.get(user_id)

    def read_positions(self, conversation_id: str) -> "Deferred[dict[str, int]]":
        return self._db.run_interaction("read_positions", _read_positions_txn, conversation_id)

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        return self._db.run_interaction("mark_read", _mark_read_txn, user_id, conversation_id, seq)

    # -- group commit --------------------------------------------------
    def append(self, request: AppendRequest) -> "Deferred[AppendResult]":
        if request.msg_id is None:
            request = replace(request, msg_id=new_id("m", request.ts))
        d: Deferred[AppendResult] = Deferred()
        self._queue.append((request, d))
        if self._metrics is not None:
            self._queued_at.append(self._metrics.hop_append_queue.now())
        if self._flushing is None:
            self._flush()
        return d

    def pending(self) -> int:
        """Appends queued or in flight."""
        return len(self._queue) + (0 if self._flushing is None else 1)

    def _flush(self) -> None:
        batch, self._queue = self._queue[: self._batch_max], self._queue[self._batch_max:]
        self.batches += 1
        metrics = self._metrics
        if metrics is not None:
            queue_hop = metrics.hop_append_queue
            started = queue_hop.now()
            arrived, self._queued_at = self._queued_at[: self._batch_max], self._queued_at[self._batch_max:]
            for t in arrived:
                queue_hop.observe(started - t)
        d = self._db.run_interaction("append_batch", append_batch_txn, [req for req, _ in batch])
        self._flushing = d
        if metrics is not None:
            commit_hop = metrics.hop_append_commit
            d.addCallback(_timed, commit_hop, started)

        def committed(results: list[AppendResult | Exception]) -> None:
            for (_, waiter), result in zip(batch, results):
                if isinstance(result, Exception):
                    waiter.errback(Failure(result))
                else:
                    waiter.callback(result)

        def failed(reason: Failure) -> "Deferred[None] | None":
            error = reason.value
            if len(batch) > 1 and isinstance(error, Exception) and not self._db.engine.is_outage(error):
                # Not the database: one request (or a bug) broke the batch.
                # Each goes again alone, so only the culprit fails.
                log.warn("append batch of {n} failed ({error}); retrying its appends one by one",
                         n=len(batch), error=type(error).__name__)
                self.isolations += 1
                return Deferred.fromCoroutine(self._one_by_one(batch))
            self._fail(batch[0][1] if len(batch) == 1 else None, reason, len(batch))
            if len(batch) > 1:
                for _, waiter in batch:
                    waiter.errback(reason)
            return None

        def next_batch(_: object) -> None:
            self._flushing = None
            if self._queue:
                self._flush()

        d.addCallbacks(committed, failed)
        d.addBoth(next_batch)

    async def _one_by_one(self, batch: list[tuple[AppendRequest, "Deferred[AppendResult]"]]) -> None:
        """Commit each request of a failed batch in its own transaction, in
        order; every waiter hears after its own commit. Should the database
        itself fail meanwhile, the rest get that failure at once."""
        outage: Failure | None = None
        for request, waiter in batch:
            if outage is not None:
                waiter.errback(outage)
                continue
            try:
                [result] = await self._db.run_interaction("append_one", append_batch_txn, [request])
            except Exception as e:
                reason = Failure(e)
                if self._db.engine.is_outage(e):
                    outage = reason
                    log.failure("append failed", reason)
                    waiter.errback(reason)
                else:
                    self._fail(waiter, reason, 1)
                continue
            if isinstance(result, Exception):
                waiter.errback(Failure(result))
            else:
                waiter.callback(result)

    def _fail(self, waiter: "Deferred[AppendResult] | None", reason: Failure, n: int) -> None:
        """Fail ``waiter`` (one request alone; None: a whole batch, failed
        by an outage, its waiters failed by the caller). A value the
        database cannot store is the client's mistake: ``bad_request``,
        logged without the value. Anything else is the server's, logged."""
        error = reason.value
        engine = self._db.engine
        if (waiter is not None and isinstance(error, Exception) and not engine.is_outage(error)
                and engine.is_bad_data(error)):
            self.unstorable += 1
            log.warn("append refused: the database cannot store it ({error})", error=type(error).__name__)
            waiter.errback(Failure(Unstorable("this message cannot be stored (a value is not valid for the "
                                              "database); fix it, do not retry it unchanged")))
            return
        log.failure("append batch of {n} failed", reason, n=n)
        if waiter is not None:
            waiter.errback(reason)

    def drain(self) -> "Deferred[None]":
        """Fires once every queued append has committed or failed."""
        done: Deferred[None] = Deferred()

        def check(_: object = None) -> None:
            if self._flushing is None and not self._queue:
                done.callback(None)
            elif self._flushing is not None:
                self._flushing.addBoth(passthrough)

        def passthrough(result: object) -> object:
            check()
            return result

        check()
        return done
