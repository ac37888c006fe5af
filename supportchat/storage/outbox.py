"""The webhook outbox: events that are not message-log entries (an internal
note, a rating), added by the workflow's own transaction so that the change
and its event commit together (pool thread only). The body is final when
written: the same bytes go out on every attempt and replay
(docs/webhooks.md; read by ``supportchat.webhooks.store``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from supportchat.storage.database import Cursor


def add_outbox_txn(cur: Cursor, event_type: str, conversation_id: str, now: float, data: dict[str, Any],
                   subject: str = "") -> str:
    """Add one event; returns its id. ``subject`` is the customer's key for
    customer events (they have no conversation)."""
    event_id = "evt_" + uuid.uuid4().hex
    body = json.dumps({"id": event_id, "type": event_type, "created_at": now, "data": data},
                      separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    cur.execute("INSERT INTO webhook_outbox (event_id, event_type, conversation_id, created_at, body, subject)"
                " VALUES (?, ?, ?, ?, ?, ?)", (event_id, event_type, conversation_id, now, body, subject))
    return event_id


def forget_customer_txn(cur: Cursor, customer_key: str) -> int:
    """Remove the outbox events that describe a customer (their profile)."""
    cur.execute("DELETE FROM webhook_outbox_state WHERE event_id IN "
                "(SELECT event_id FROM webhook_outbox WHERE subject = ?)", (customer_key,))
    cur.execute("DELETE FROM webhook_outbox WHERE subject = ?", (customer_key,))
    return cur.rowcount
