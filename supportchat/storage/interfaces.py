"""The storage seams. Each has an in-memory twin and SQL implementation(s),
and one contract suite in ``tests/`` runs against all of them."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from supportchat.storage.models import (
    AppendRequest,
    AppendResult,
    Conversation,
    IdempotencyRecord,
    Message,
    Participant,
    SessionState,
)


class ConversationStore(Protocol):
    """Conversations, their participants and their gapless message log."""

    def open_conversation(self, customer_id: str, now: float) -> "Deferred[tuple[Conversation, bool]]":
        """The customer's open conversation, creating one if there is none.
        Returns it and whether it was created."""

    def get_conversation(self, conversation_id: str) -> "Deferred[Conversation | None]": ...

    def list_conversations(self, user_id: str) -> "Deferred[list[Conversation]]":
        """Open conversations the user participates in."""

    def list_unassigned(self, limit: int) -> "Deferred[list[Conversation]]":
        """Open conversations no agent has joined yet, oldest first."""

    def get_participants(self, conversation_id: str) -> "Deferred[list[Participant]]": ...

    def append(self, request: AppendRequest) -> "Deferred[AppendResult]":
        """Durably append one message with the next seq; idempotent on
        (sender, client_msg_id) inside the window. Raises NotFound when the
        conversation is missing or the sender may not write to it."""

    def get_messages(self, conversation_id: str, after_seq: int, limit: int) -> "Deferred[list[Message]]":
        """Messages with seq > after_seq, ascending, at most ``limit``."""


class IdempotencyStore(Protocol):
    """Remembers the outcome of each (sender, client_msg_id) for a window."""

    def lookup(self, sender_id: str, client_msg_id: str, now: float) -> "Deferred[IdempotencyRecord | None]": ...

    def record(self, sender_id: str, client_msg_id: str, outcome: IdempotencyRecord, expires_at: float) -> "Deferred[bool]":
        """Store the outcome unless a live one exists; True if stored."""

    def purge(self, now: float) -> "Deferred[int]":
        """Forget expired keys; returns how many."""


class SessionStateStore(Protocol):
    """Per-user session state: unread, last message id and time."""

    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]": ...

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        """Set the read position; returns the new unread count."""


class PresenceStore(Protocol):
    """Who is online, refreshed by heartbeats, forgotten after a TTL."""

    def touch(self, user_id: str, connection_id: str) -> "Deferred[None]":
        """Mark the connection alive for another TTL."""

    def remove(self, user_id: str, connection_id: str) -> "Deferred[None]":
        """The connection closed: forget it at once."""

    def is_online(self, user_id: str) -> "Deferred[bool]": ...

    def online_users(self) -> "Deferred[list[str]]": ...
