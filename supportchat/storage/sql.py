"""SQL implementations of the storage seams, over :class:`Database`.

Appends are group-committed: while one batch transaction runs, new appends
queue up and go in the next one, so throughput does not fall to one fsync
per message. Each waiter's Deferred fires only after its batch committed.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import (
    EVENT,
    AppendRequest,
    AppendResult,
    Conflict,
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

_CONV_COLS = "id, customer_id, status, created_at, last_seq, last_msg_id, last_ts"
_MSG_COLS = "conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts, data"


def _conv(row: Any) -> Conversation:
    return Conversation(
        id=row[0], customer_id=row[1], status=row[2], created_at=float(row[3]),
        last_seq=int(row[4]), last_msg_id=row[5],
        last_ts=None if row[6] is None else float(row[6]),
    )


def _msg(row: Any) -> Message:
    return Message(
        conversation_id=row[0], msg_id=row[1], seq=int(row[2]), sender_id=row[3],
        sender_role=row[4], client_msg_id=row[5], kind=row[6], body=row[7],
        ts=float(row[8]), data=None if row[9] is None else json.loads(row[9]),
    )


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
        "INSERT INTO idempotency_keys (sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (sender_id, client_msg_id, outcome.conversation_id, outcome.msg_id, outcome.seq, outcome.ts, expires_at),
    )
    return True


def _participants_txn(cur: Cursor, conversation_id: str) -> list[Participant]:
    cur.execute(
        "SELECT user_id, role FROM participants WHERE conversation_id = ? ORDER BY joined_at, user_id",
        (conversation_id,),
    )
    return [Participant(r[0], r[1]) for r in cur.fetchall()]


def _get_message_txn(cur: Cursor, conversation_id: str, seq: int) -> Message:
    cur.execute(
        f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND seq = ?",
        (conversation_id, seq),
    )
    return _msg(cur.fetchone())


def append_one_txn(cur: Cursor, req: AppendRequest) -> AppendResult:
    """Idempotency check, seq assignment, insert, conversation and unread
    updates, idempotency record: all in the caller's transaction."""
    if req.client_msg_id is not None:
        prior = idempotency_lookup_txn(cur, req.sender_id, req.client_msg_id, req.ts)
        if prior is not None:
            return AppendResult(
                message=_get_message_txn(cur, prior.conversation_id, prior.seq),
                duplicate=True,
                participants=tuple(_participants_txn(cur, prior.conversation_id)),
            )
    cur.execute(
        "SELECT last_seq FROM conversations WHERE id = ?" + cur.engine.for_update(),
        (req.conversation_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound("no such conversation")
    participants = _participants_txn(cur, req.conversation_id)
    present = any(p.user_id == req.sender_id for p in participants)
    if req.join and present:
        raise Conflict("already a participant")
    if req.join:
        cur.execute(
            "INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
            " VALUES (?, ?, ?, ?, 0, 0)",
            (req.conversation_id, req.sender_id, req.sender_role, req.ts),
        )
        participants.append(Participant(req.sender_id, req.sender_role))
    elif req.require_participant and not present:
        raise NotFound("no such conversation")
    seq = max(int(row[0]), req.seq_floor) + 1
    msg = Message(
        conversation_id=req.conversation_id, msg_id=new_id("m", req.ts), seq=seq,
        sender_id=req.sender_id, sender_role=req.sender_role, client_msg_id=req.client_msg_id,
        kind=req.kind, body=req.body, ts=req.ts, data=req.data,
    )
    cur.execute(
        f"INSERT INTO messages ({_MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (msg.conversation_id, msg.msg_id, seq, msg.sender_id, msg.sender_role, msg.client_msg_id,
         msg.kind, msg.body, msg.ts, None if msg.data is None else json.dumps(msg.data)),
    )
    cur.execute(
        "UPDATE conversations SET last_seq = ?, last_msg_id = ?, last_ts = ? WHERE id = ?",
        (seq, msg.msg_id, msg.ts, req.conversation_id),
    )
    cur.execute(
        "UPDATE participants SET last_read_seq = ?, unread = 0 WHERE conversation_id = ? AND user_id = ?",
        (seq, req.conversation_id, req.sender_id),
    )
    if req.kind != EVENT:
        cur.execute(
            "UPDATE participants SET unread = unread + 1 WHERE conversation_id = ? AND user_id <> ?",
            (req.conversation_id, req.sender_id),
        )
    if req.client_msg_id is not None:
        idempotency_record_txn(
            cur, req.sender_id, req.client_msg_id,
            IdempotencyRecord(req.conversation_id, msg.msg_id, seq, msg.ts),
            req.ts + req.idempotency_window, req.ts,
        )
    return AppendResult(message=msg, duplicate=False, participants=tuple(participants))


def append_batch_txn(cur: Cursor, requests: list[AppendRequest]) -> list[AppendResult | Exception]:
    """Append a batch in one transaction. A refused request (StoreError)
    refuses alone: it is checked before it writes anything."""
    results: list[AppendResult | Exception] = []
    for req in requests:
        try:
            results.append(append_one_txn(cur, req))
        except StoreError as e:
            results.append(e)
    return results


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
        f"INSERT INTO conversations ({_CONV_COLS}) VALUES (?, ?, ?, ?, 0, NULL, NULL)",
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


def _get_states_txn(cur: Cursor, user_id: str) -> list[SessionState]:
    cur.execute(
        "SELECT c.id, p.unread, p.last_read_seq, c.last_seq, c.last_msg_id, c.last_ts, c.status"
        " FROM participants p JOIN conversations c ON c.id = p.conversation_id"
        " WHERE p.user_id = ? AND c.status = 'open' ORDER BY c.id",
        (user_id,),
    )
    return [
        SessionState(r[0], int(r[1]), int(r[2]), int(r[3]), r[4], None if r[5] is None else float(r[5]), r[6])
        for r in cur.fetchall()
    ]


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


class SqlConversationStore:
    """Conversations, participants, messages and session state in SQL."""

    def __init__(self, db: Database, batch_max: int = 512) -> None:
        self._db = db
        self._batch_max = batch_max
        self._queue: list[tuple[AppendRequest, Deferred[AppendResult]]] = []
        self._flushing: Deferred[Any] | None = None
        self.batches = 0

    def open_conversation(self, customer_id: str, now: float) -> "Deferred[tuple[Conversation, bool]]":
        return self._db.run_interaction("open_conversation", _open_conversation_txn, customer_id, now)

    def get_conversation(self, conversation_id: str) -> "Deferred[Conversation | None]":
        return self._db.run_interaction("get_conversation", _get_conversation_txn, conversation_id)

    def add_participant(self, conversation_id: str, user_id: str, role: str, now: float) -> "Deferred[bool]":
        return self._db.run_interaction("add_participant", add_participant_txn, conversation_id, user_id, role, now)

    def list_conversations(self, user_id: str) -> "Deferred[list[Conversation]]":
        return self._db.run_interaction("list_conversations", _list_conversations_txn, user_id)

    def list_unassigned(self, limit: int) -> "Deferred[list[Conversation]]":
        return self._db.run_interaction("list_unassigned", _list_unassigned_txn, limit)

    def get_participants(self, conversation_id: str) -> "Deferred[list[Participant]]":
        return self._db.run_interaction("get_participants", _participants_txn, conversation_id)

    def get_messages(self, conversation_id: str, after_seq: int, limit: int) -> "Deferred[list[Message]]":
        return self._db.run_interaction("get_messages", _get_messages_txn, conversation_id, after_seq, limit)

    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]":
        return self._db.run_interaction("get_states", _get_states_txn, user_id)

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        return self._db.run_interaction("mark_read", _mark_read_txn, user_id, conversation_id, seq)

    # -- group commit --------------------------------------------------
    def append(self, request: AppendRequest) -> "Deferred[AppendResult]":
        d: Deferred[AppendResult] = Deferred()
        self._queue.append((request, d))
        if self._flushing is None:
            self._flush()
        return d

    def pending(self) -> int:
        """Appends queued or in flight."""
        return len(self._queue) + (0 if self._flushing is None else 1)

    def _flush(self) -> None:
        batch, self._queue = self._queue[: self._batch_max], self._queue[self._batch_max:]
        self.batches += 1
        d = self._db.run_interaction("append_batch", append_batch_txn, [req for req, _ in batch])
        self._flushing = d

        def committed(results: list[AppendResult | Exception]) -> None:
            for (_, waiter), result in zip(batch, results):
                if isinstance(result, Exception):
                    waiter.errback(Failure(result))
                else:
                    waiter.callback(result)

        def failed(reason: Failure) -> None:
            log.failure("append batch of {n} failed", reason, n=len(batch))
            for _, waiter in batch:
                waiter.errback(reason)

        def next_batch(_: object) -> None:
            self._flushing = None
            if self._queue:
                self._flush()

        d.addCallbacks(committed, failed)
        d.addBoth(next_batch)

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
