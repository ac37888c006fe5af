"""Flushing already-sequenced messages (from the Redis stream) into SQL.

Idempotent: a message is inserted only if its msg_id is new, so a batch
replayed after a persister crash changes nothing the second time.
"""

from __future__ import annotations

import json

from supportchat.storage.database import Cursor
from supportchat.storage.models import EVENT, Message

_COLS = "conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts, data"


def persist_batch_txn(cur: Cursor, messages: list[Message], idempotency_window: float) -> tuple[int, list[str]]:
    """Insert the messages not stored yet; returns (inserted, msg_ids that
    conflict with a different message at the same seq)."""
    inserted = 0
    conflicts: list[str] = []
    for msg in messages:
        cur.execute("SELECT 1 FROM messages WHERE msg_id = ?", (msg.msg_id,))
        if cur.fetchone() is not None:
            continue
        cur.execute(
            "SELECT msg_id FROM messages WHERE conversation_id = ? AND seq = ?", (msg.conversation_id, msg.seq)
        )
        if cur.fetchone() is not None:
            conflicts.append(msg.msg_id)
            continue
        if msg.client_msg_id is not None:
            # Committed straight to SQL while Redis was unreachable (the reply
            # of a script that ran was lost): keep the copy the client was acked.
            cur.execute(
                "SELECT msg_id FROM idempotency_keys WHERE sender_id = ? AND client_msg_id = ?",
                (msg.sender_id, msg.client_msg_id),
            )
            row = cur.fetchone()
            if row is not None and row[0] != msg.msg_id:
                conflicts.append(msg.msg_id)
                continue
        cur.execute("SELECT 1 FROM conversations WHERE id = ?", (msg.conversation_id,))
        if cur.fetchone() is None:
            conflicts.append(msg.msg_id)
            continue
        cur.execute(
            cur.engine.insert_ignore("messages", _COLS, ", ".join("?" * 10)),
            (msg.conversation_id, msg.msg_id, msg.seq, msg.sender_id, msg.sender_role, msg.client_msg_id,
             msg.kind, msg.body, msg.ts, None if msg.data is None else json.dumps(msg.data)),
        )
        inserted += 1
        cur.execute(
            "UPDATE conversations SET last_seq = ?, last_msg_id = ?, last_ts = ? WHERE id = ? AND last_seq < ?",
            (msg.seq, msg.msg_id, msg.ts, msg.conversation_id, msg.seq),
        )
        cur.execute(
            "UPDATE participants SET last_read_seq = ?, unread = 0"
            " WHERE conversation_id = ? AND user_id = ? AND last_read_seq < ?",
            (msg.seq, msg.conversation_id, msg.sender_id, msg.seq),
        )
        if msg.kind != EVENT:
            cur.execute(
                "UPDATE participants SET unread = unread + 1 WHERE conversation_id = ? AND user_id <> ?"
                " AND last_read_seq < ?",
                (msg.conversation_id, msg.sender_id, msg.seq),
            )
        if msg.client_msg_id is not None:
            cur.execute(
                cur.engine.insert_ignore(
                    "idempotency_keys",
                    "sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at",
                    "?, ?, ?, ?, ?, ?, ?",
                ),
                (msg.sender_id, msg.client_msg_id, msg.conversation_id, msg.msg_id, msg.seq, msg.ts,
                 msg.ts + idempotency_window),
            )
    return inserted, conflicts
