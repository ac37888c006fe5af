"""Row shapes shared by the SQL modules: column lists, row -> model, and the
two small reads every writer needs (pool thread only)."""

from __future__ import annotations

import json
from typing import Any

from supportchat.storage.database import Cursor
from supportchat.storage.models import Conversation, Message, Participant

CONV_COLS = "id, customer_id, status, created_at, last_seq, last_msg_id, last_ts, closed_at"
MSG_COLS = "conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts, data"
IDEM_COLS = "sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at"


def conv_from_row(row: Any) -> Conversation:
    return Conversation(
        id=row[0], customer_id=row[1], status=row[2], created_at=float(row[3]),
        last_seq=int(row[4]), last_msg_id=row[5],
        last_ts=None if row[6] is None else float(row[6]),
        closed_at=None if row[7] is None else float(row[7]),
    )


def msg_from_row(row: Any) -> Message:
    return Message(
        conversation_id=row[0], msg_id=row[1], seq=int(row[2]), sender_id=row[3],
        sender_role=row[4], client_msg_id=row[5], kind=row[6], body=row[7],
        ts=float(row[8]), data=None if row[9] is None else json.loads(row[9]),
    )


def msg_to_row(m: Message) -> tuple[Any, ...]:
    """The values of ``MSG_COLS`` for a message."""
    return (m.conversation_id, m.msg_id, m.seq, m.sender_id, m.sender_role, m.client_msg_id, m.kind, m.body, m.ts,
            None if m.data is None else json.dumps(m.data))


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


def participants_txn(cur: Cursor, conversation_id: str) -> list[Participant]:
    cur.execute(
        "SELECT user_id, role FROM participants WHERE conversation_id = ? ORDER BY joined_at, user_id",
        (conversation_id,),
    )
    return [Participant(r[0], r[1]) for r in cur.fetchall()]


def get_message_txn(cur: Cursor, conversation_id: str, seq: int) -> Message:
    cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq = ?", (conversation_id, seq))
    return msg_from_row(cur.fetchone())
