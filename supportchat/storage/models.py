"""Plain data carried between the chat handlers and the stores."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = ("customer", "agent", "admin")
TEXT = "text"
EVENT = "event"

# Principals are (namespace, id): customers are one namespace, staff
# (agents and admins: accounts, whose role may change) and the system's own
# senders ("workflow", the bot) another. Inside the server and in every
# store a principal is known by its *key*: a customer's id carries this
# prefix, everyone else's is their id unchanged. So a customer token whose
# ``sub`` equals an agent's id is still another principal. Staff ids may not
# begin with the prefix (tokens and accounts with such an id are refused).
# Clients never see keys: the wire shows ``{"id": sub, "role": ...}``.
CUSTOMER_KEY_PREFIX = "c:"


def principal_key(role: str, user_id: str) -> str:
    """The key of the principal ``(role, user_id)``: the one place ids are
    namespaced (participants, senders, session state, idempotency,
    presence, deliveries, customer ids of conversations and profiles)."""
    return CUSTOMER_KEY_PREFIX + user_id if role == "customer" else user_id


def customer_key(customer_id: str) -> str:
    """The key of the customer whose (wire, token) id is ``customer_id``."""
    return principal_key("customer", customer_id)


def wire_id(key: str) -> str:
    """The id clients see for a principal key (the token's ``sub``)."""
    return key[len(CUSTOMER_KEY_PREFIX):] if key.startswith(CUSTOMER_KEY_PREFIX) else key


def is_staff_id_allowed(user_id: str) -> bool:
    """Staff ids (token ``sub`` of agents and admins, account ids) may not
    look like customer keys."""
    return not user_id.startswith(CUSTOMER_KEY_PREFIX)


def new_id(prefix: str, now: float | None = None) -> str:
    """A sortable unique id: millisecond time then 64 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{prefix}{ms:012x}{os.urandom(8).hex()}"


@dataclass(frozen=True)
class Conversation:
    id: str
    customer_id: str  # the customer's principal key
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
            "customer_id": wire_id(self.customer_id),
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
    user_id: str  # the principal key (see principal_key)
    role: str

    def to_wire(self) -> dict[str, Any]:
        return {"id": wire_id(self.user_id), "role": self.role}


# In a text message's ``data``: the sender's display name when it was written
# (staff only); on the wire as ``sender.name``.
SENDER_NAME = "sender_name"


@dataclass(frozen=True)
class Message:
    conversation_id: str
    msg_id: str
    seq: int
    sender_id: str  # the sender's principal key
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
            "sender": {"id": wire_id(self.sender_id), "role": self.sender_role},
            "kind": self.kind,
            "body": self.body,
            "ts": self.ts,
        }
        if self.data is not None:
            if self.kind == EVENT:
                frame["event"] = self.data
                return frame
            data = self.data
            if SENDER_NAME in data:
                # The display name a staff member had when they wrote it.
                frame["sender"]["name"] = data[SENDER_NAME]
                data = {k: v for k, v in data.items() if k != SENDER_NAME}
            if "attachments" in data:
                # What the message stores; links are added per response
                # (supportchat/attachments/links.py).
                frame["attachments"] = data["attachments"]
            elif data:
                frame["event"] = data
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
    # The store has already sent the message to the participants on other
    # nodes, in the append's own round trip (Redis mode): only this node's
    # sessions are left to deliver to.
    fanned_out: bool = False


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
