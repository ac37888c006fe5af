"""History, search, retention and privacy over SQL.

Reads for the REST API (keyset pages of a conversation, full-text search
with each engine's own facility), closing conversations, and deletes done
in small batches (retention of closed conversations, erasing a customer):
each batch is one short transaction in the pool thread, and the loop that
repeats them (:func:`repeat_batches`) yields to the reactor in between.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import Conversation, Message, wire_id
from supportchat.storage.outbox import add_outbox_txn, forget_customer_txn
from supportchat.storage.rows import CONV_COLS as _CONV_COLS
from supportchat.storage.rows import MSG_COLS as _MSG_COLS
from supportchat.storage.rows import conv_from_row as _conv
from supportchat.storage.rows import msg_from_row as _msg
from supportchat.storage.rows import participants_txn as _participants_txn
from supportchat.storage.rows import placeholders as _placeholders

_M_COLS = ", ".join("m." + c.strip() for c in _MSG_COLS.split(","))
# Conversations whose rows one delete batch may touch.
CONVERSATIONS_PER_BATCH = 50


# -- transaction functions (pool thread) ----------------------------------

def visible_conversation_txn(cur: Cursor, conversation_id: str, user_id: str, role: str) -> Conversation | None:
    """The conversation if the user may read it: admins all, everyone else
    only as a participant (customers are participants of their own)."""
    cur.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE id = ?", (conversation_id,))
    row = cur.fetchone()
    if row is None:
        return None
    if role == "admin":
        return _conv(row)
    cur.execute(
        "SELECT 1 FROM participants WHERE conversation_id = ? AND user_id = ?", (conversation_id, user_id)
    )
    return _conv(row) if cur.fetchone() is not None else None


def messages_page_txn(
    cur: Cursor, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
) -> list[Message]:
    """Keyset page, ascending by seq. With only ``before_seq``: the last
    ``limit`` messages below it; otherwise the first ``limit`` above
    ``after_seq`` (0 when absent), below ``before_seq`` when given."""
    if before_seq is not None and after_seq is None:
        cur.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (conversation_id, before_seq, limit),
        )
        return [_msg(r) for r in reversed(cur.fetchall())]
    sql = f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ?"
    args: list[Any] = [conversation_id, after_seq or 0]
    if before_seq is not None:
        sql += " AND seq < ?"
        args.append(before_seq)
    cur.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit))
    return [_msg(r) for r in cur.fetchall()]


def search_txn(cur: Cursor, user_id: str | None, text: str, limit: int) -> list[Message]:
    """Text messages matching every word of ``text``, newest first; only in
    conversations ``user_id`` participates in (all when None)."""
    query = cur.engine.fts_query(text)
    if not query.strip():
        return []
    join, condition = cur.engine.fts_match()
    sql = f"SELECT {_M_COLS} FROM messages m{join}"
    args: list[Any] = []
    if user_id is not None:
        sql += " JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = ?"
        args.append(user_id)
    sql += f" WHERE {condition} AND m.kind <> 'event' ORDER BY m.ts DESC, m.msg_id DESC LIMIT ?"
    args += [query, limit]
    cur.execute(sql, args)
    return [_msg(r) for r in cur.fetchall()]


def close_conversation_txn(cur: Cursor, conversation_id: str, now: float) -> bool:
    cur.execute(
        "UPDATE conversations SET status = 'closed', closed_at = ? WHERE id = ? AND status = 'open'",
        (now, conversation_id),
    )
    return cur.rowcount == 1


def _delete_conversations_batch_txn(cur: Cursor, ids: list[str], batch: int) -> int:
    """Delete up to ``batch`` messages of the conversations ``ids``; once
    none are left, the conversations themselves. Returns rows deleted."""
    marks = _placeholders(len(ids))
    cur.execute(f"SELECT msg_id FROM messages WHERE conversation_id IN ({marks}) LIMIT ?", (*ids, batch))
    msg_ids = [r[0] for r in cur.fetchall()]
    deleted = 0
    if msg_ids:
        cur.execute(f"DELETE FROM messages WHERE msg_id IN ({_placeholders(len(msg_ids))})", msg_ids)
        deleted += cur.rowcount
    if len(msg_ids) < batch:
        # Every message of these conversations is gone: the rest is small.
        # Their attachments can no longer be read or sent, and the
        # attachment sweep removes rows and bytes (supportchat/attachments/).
        _retire_attachments_txn(cur, "conversation_id", ids)
        for table, column in (("participants", "conversation_id"), ("idempotency_keys", "conversation_id"),
                              ("work_notes", "conversation_id"), ("work_items", "conversation_id"),
                              ("bot_states", "conversation_id"), ("webhook_outbox", "conversation_id"),
                              ("webhook_cursors", "conversation_id"), ("webhook_deliveries", "conversation_id"),
                              ("email_subscriptions", "conversation_id"), ("email_outbox", "conversation_id"),
                              ("conversations", "id")):
            cur.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
            deleted += cur.rowcount
    return deleted


# An attachment retired by erase or retention: no uploader (no principal key
# is empty), no conversation, created at 0: nobody may read or send it, and
# the next attachment sweep deletes the row and its bytes.
RETIRED_UPLOADER = ""


def _retire_attachments_txn(cur: Cursor, column: str, values: list[str]) -> int:
    cur.execute(f"UPDATE attachments SET uploader = ?, conversation_id = NULL, claim = NULL, claimed_at = NULL, "
                f"created_at = 0 WHERE {column} IN ({_placeholders(len(values))}) AND uploader <> ?",
                (RETIRED_UPLOADER, *values, RETIRED_UPLOADER))
    return cur.rowcount


def retention_batch_txn(cur: Cursor, cutoff: float, batch: int) -> int:
    """One batch of deleting conversations closed before ``cutoff``."""
    cur.execute(
        "SELECT id FROM conversations WHERE status = 'closed' AND closed_at < ? ORDER BY closed_at, id LIMIT ?",
        (cutoff, CONVERSATIONS_PER_BATCH),
    )
    ids = [r[0] for r in cur.fetchall()]
    return _delete_conversations_batch_txn(cur, ids, batch) if ids else 0


def erase_customer_batch_txn(cur: Cursor, customer_id: str, batch: int, now: float = 0.0) -> int:
    """One batch of erasing a customer (``customer_id`` is their principal
    key): their conversations (messages, participants, idempotency keys,
    workflow item with rating and internal notes, bot state), then anything
    else under their key, their profile (kept under their plain id)
    included; the webhook outbox's events about them. The last batch (the
    one that finds nothing left) adds the ``customer.erased`` event at
    ``now``."""
    cur.execute(
        "SELECT id FROM conversations WHERE customer_id = ? ORDER BY id LIMIT ?",
        (customer_id, CONVERSATIONS_PER_BATCH),
    )
    ids = [r[0] for r in cur.fetchall()]
    if ids:
        return _delete_conversations_batch_txn(cur, ids, batch)
    deleted = 0
    cur.execute("SELECT msg_id FROM messages WHERE sender_id = ? LIMIT ?", (customer_id, batch))
    msg_ids = [r[0] for r in cur.fetchall()]
    if msg_ids:
        cur.execute(f"DELETE FROM messages WHERE msg_id IN ({_placeholders(len(msg_ids))})", msg_ids)
        return cur.rowcount
    for table in ("idempotency_keys",):
        cur.execute(f"DELETE FROM {table} WHERE sender_id = ?", (customer_id,))
        deleted += cur.rowcount
    deleted += _retire_attachments_txn(cur, "uploader", [customer_id])
    for table, column in (("participants", "user_id"), ("work_items", "customer_id")):
        cur.execute(f"DELETE FROM {table} WHERE {column} = ?", (customer_id,))
        deleted += cur.rowcount
    cur.execute("DELETE FROM customer_profiles WHERE customer_id = ?", (wire_id(customer_id),))
    deleted += cur.rowcount
    deleted += forget_customer_txn(cur, customer_id)
    if deleted == 0:
        # The last batch: all is gone. Tell the webhooks (in this transaction).
        add_outbox_txn(cur, "customer.erased", "", now, {"customer": {"id": wire_id(customer_id)}})
    return deleted


def export_customer_txn(cur: Cursor, customer_id: str) -> dict[str, Any]:
    """Everything stored about a customer (by principal key), as JSON-ready
    data (ids as clients know them)."""
    cur.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE customer_id = ? ORDER BY created_at, id", (customer_id,))
    conversations = [_conv(r) for r in cur.fetchall()]
    out = []
    for conv in conversations:
        cur.execute(f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY seq", (conv.id,))
        messages = [_msg(r).to_wire() for r in cur.fetchall()]
        for m in messages:
            m.pop("type", None)
        entry = conv.to_wire()
        entry["participants"] = [p.to_wire() for p in _participants_txn(cur, conv.id)]
        entry["messages"] = messages
        entry["workflow"] = _work_item_export_txn(cur, conv.id)
        out.append(entry)
    cur.execute("SELECT id, name, content_type, size, sha256, width, height, created_at, conversation_id "
                "FROM attachments WHERE uploader = ? ORDER BY created_at, id", (customer_id,))
    uploads = [dict(zip(("id", "name", "content_type", "size", "sha256", "width", "height", "created_at",
                         "conversation"), r)) for r in cur.fetchall()]
    return {"customer_id": wire_id(customer_id), "conversations": out, "attachments": uploads}


_WORK_COLS = ("team_id", "state", "agent_id", "queued_at", "assigned_at", "closed_at", "rating", "rating_comment",
              "rated_at")


def _work_item_export_txn(cur: Cursor, conversation_id: str) -> dict[str, Any] | None:
    """The conversation's place in the workflow (team, agent, times, the
    customer's rating) and the agents' internal notes about it."""
    cur.execute(f"SELECT {', '.join(_WORK_COLS)} FROM work_items WHERE conversation_id = ?", (conversation_id,))
    row = cur.fetchone()
    if row is None:
        return None
    item: dict[str, Any] = dict(zip(_WORK_COLS, row))
    cur.execute("SELECT author_id, body, ts FROM work_notes WHERE conversation_id = ? ORDER BY ts", (conversation_id,))
    item["notes"] = [{"author_id": a, "body": b, "ts": t} for a, b, t in cur.fetchall()]
    return item


# -- the store (reactor thread) -------------------------------------------

class SqlHistoryStore:
    """History, search, retention and privacy over :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def visible_conversation(self, conversation_id: str, user_id: str, role: str) -> "Deferred[Conversation | None]":
        return self._db.run_interaction("visible_conversation", visible_conversation_txn, conversation_id, user_id, role)

    def messages_page(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> "Deferred[list[Message]]":
        return self._db.run_interaction("messages_page", messages_page_txn, conversation_id, after_seq, before_seq, limit)

    def search(self, user_id: str | None, text: str, limit: int) -> "Deferred[list[Message]]":
        return self._db.run_interaction("search", search_txn, user_id, text, limit)

    def close_conversation(self, conversation_id: str, now: float) -> "Deferred[bool]":
        return self._db.run_interaction("close_conversation", close_conversation_txn, conversation_id, now)

    def retention_batch(self, cutoff: float, batch: int) -> "Deferred[int]":
        return self._db.run_interaction("retention_batch", retention_batch_txn, cutoff, batch)

    def erase_customer_batch(self, customer_id: str, batch: int, now: float = 0.0) -> "Deferred[int]":
        return self._db.run_interaction("erase_customer_batch", erase_customer_batch_txn, customer_id, batch, now)

    def export_customer(self, customer_id: str) -> "Deferred[dict[str, Any]]":
        return self._db.run_interaction("export_customer", export_customer_txn, customer_id)


@inlineCallbacks
def repeat_batches(step: Callable[[], "Deferred[int]"], clock: IReactorTime | None = None) -> Any:
    """Run ``step`` (one small delete transaction) until it deletes nothing;
    returns the total. With a clock, each next batch waits for a fresh
    reactor turn, so a long purge never keeps the reactor from other work."""
    total = 0
    while True:
        n = yield step()
        total += n
        if n == 0:
            return total
        if clock is not None:
            yield deferLater(clock, 0, lambda: None)


def export_json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)


class Retention:
    """Deletes conversations closed more than ``days`` ago, batch by batch.
    ``tick`` (from a timer) starts a pass unless one is still running."""

    def __init__(self, clock: IReactorTime, history: "SqlHistoryStore | Any", days: float, batch: int) -> None:
        self._clock = clock
        self._history = history
        self._days = days
        self._batch = batch
        self._running: Deferred[Any] | None = None
        self.deleted = 0

    def tick(self) -> "Deferred[Any] | None":
        if self._days <= 0 or self._running is not None:
            return None
        cutoff = self._clock.seconds() - self._days * 86400.0
        d = repeat_batches(lambda: self._history.retention_batch(cutoff, self._batch), self._clock)

        def done(n: Any) -> Any:
            self._running = None
            if isinstance(n, int):
                self.deleted += n
            return n

        self._running = d
        d.addBoth(done)
        return d
