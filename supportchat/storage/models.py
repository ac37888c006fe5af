"""Plain data carried between the chat handlers and the stores."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = ("customer", "agent", "admin")
TEXT = "text"
EVENT = "event"


def new_id(prefix: str, now: float | None = None) -> str:
    """A sortable unique id: millisecond time then 64 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{prefix}{ms:012x}{os.urandom(8).hex()}"


@dataclass(frozen=True)
class Conversation:
    id: str
    customer_id: str
    status: str
    created_at: float
    last_seq: int = 0
    last_msg_id: str | None = None
    last_ts: float | None = None
    closed_at: float | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "customer_id": self.customer_id,
            "created_at": self.created_at,
            "last_seq": self.last_seq,
            "last_msg_id": self.last_msg_id,
            "last_ts": self.last_ts,
        }
        if self.closed_at is not None:
            out["closed_at"] = self.closed_at
        return out


@dataclass(frozen=True)
class Participant:
    user_id: str
    role: str


@dataclass(frozen=True)
class Message:
    conversation_id: str
    msg_id: str
    seq: int
    sender_id: str
    sender_role: str
    client_msg_id: str | None
    kind: str
    body: str
    ts: float
    data: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "message",
            "conversation": self.conversation_id,
            "msg_id": self.msg_id,
            "seq": self.seq,
            "client_msg_id": self.client_msg_id,
            "sender": {"id": self.sender_id, "role": self.sender_role},
            "kind": self.kind,
            "body": self.body,
            "ts": self.ts,
        }
        if self.data is not None:
            frame["event"] = self.data
        return frame


@dataclass(frozen=True)
class AppendRequest:
    """One message to make durable, with the side effects that share its commit."""

    conversation_id: str
    sender_id: str
    sender_role: str
    kind: str
    body: str
    ts: float
    client_msg_id: str | None = None
    data: dict[str, Any] | None = None
    # Add the sender as a participant in the same transaction (joining).
    join: bool = False
    # Only participants may write (False: system messages such as bots' events).
    require_participant: bool = True
    idempotency_window: float = 86400.0
    # Chosen before the first attempt (``new_id("m", ts)`` when None), so a
    # transaction retried after a dropped connection stores the row once.
    msg_id: str | None = None
    # The seq will be above this (degraded mode: leave room for messages
    # acknowledged through Redis that SQL has not received yet).
    seq_floor: int = 0


@dataclass(frozen=True)
class AppendResult:
    message: Message
    duplicate: bool
    participants: tuple[Participant, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class IdempotencyRecord:
    conversation_id: str
    msg_id: str
    seq: int
    ts: float


@dataclass(frozen=True)
class SessionState:
    """The per-user, per-conversation state the console reads on refresh."""

    conversation_id: str
    unread: int
    last_read_seq: int
    last_seq: int
    last_msg_id: str | None
    last_ts: float | None
    status: str


class StoreError(Exception):
    """A request the store refuses; ``code`` is a protocol error code."""

    code = "bad_request"
    retry_after: float | None = None


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"
