"""What an integrator receives: events derived from stored log entries,
their JSON bodies and the signature header.

An event is one stored message (``storage.models.Message``), so its id
(``evt_`` and the ``msg_id``) and its body are the same on every retry and
replay. Chat messages become ``message.created``; workflow lifecycle
entries (``kind`` event) become the ``conversation.*`` types below; other
log entries (queued, after hours) are not events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from supportchat.storage.models import EVENT, Message

EVENT_TYPES = (
    "conversation.created", "message.created", "note.created", "conversation.assigned",
    "conversation.transferred", "conversation.closed", "conversation.reopened", "conversation.rated",
    "customer.updated", "customer.erased",
)

# Lifecycle entries of the log (``data.name``) -> event type.
_LIFECYCLE = {
    "created": "conversation.created",
    "joined": "conversation.assigned",
    "assigned": "conversation.assigned",
    "transferred": "conversation.transferred",
    "closed": "conversation.closed",
    "reopened": "conversation.reopened",
}

SIGNATURE_HEADER = "Supportchat-Signature"
EVENT_ID_HEADER = "Supportchat-Event-Id"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    conversation_id: str
    seq: int
    created_at: float
    body: bytes  # the exact bytes POSTed, on every attempt


def event_type(message: Message) -> str | None:
    """The event a stored log entry stands for, or None."""
    if message.kind == EVENT:
        return _LIFECYCLE.get(str((message.data or {}).get("name", "")))
    return "message.created"


def to_event(message: Message) -> Event | None:
    """The event of ``message`` (None when it is not one). ``data`` is the
    message as deliveries carry it (attachments by id: links are minted per
    response and would change the body)."""
    kind = event_type(message)
    if kind is None:
        return None
    event_id = "evt_" + message.msg_id
    doc = {"id": event_id, "type": kind, "created_at": message.ts, "data": message.to_wire()}
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return Event(event_id, kind, message.conversation_id, message.seq, message.ts, body)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 with the secret's UTF-8 bytes over ``"{t}." + body``."""
    return hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secrets: list[str], timestamp: int, body: bytes) -> str:
    """``t=...,v1=...`` with one ``v1`` per secret (two during a rotation)."""
    return ",".join([f"t={timestamp}"] + [f"v1={signature(s, timestamp, body)}" for s in secrets])


def headers_for(event: Event, secrets: list[str], timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "supportchat-webhooks/1",
        EVENT_ID_HEADER: event.id,
        SIGNATURE_HEADER: signature_header(secrets, timestamp, event.body),
    }


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """What a receiver does (the same check as docs/webhooks.md): some
    ``v1`` matches and ``t`` is within ``tolerance`` seconds of ``now``."""
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance:
        return False
    expected = signature(secret, int(stamps[0]), body)
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, _, v in parts)


def decode(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(body)
    return out
