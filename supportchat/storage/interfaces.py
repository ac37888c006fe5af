"""The storage seams. Each has an in-memory twin and SQL implementation(s),
and one contract suite in ``tests/`` runs against all of them."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from supportchat.storage.models import (
    AppendRequest,
    AppendResult,
    Conversation,
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


class SessionStateStore(Protocol):
    """Per-user session state: unread, last message id and time."""

    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]": ...

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        """Set the read position; returns the new unread count."""

    def read_positions(self, conversation_id: str) -> "Deferred[dict[str, int]]":
        """Every participant's read position (user id -> seq)."""


class ChatStore(ConversationStore, SessionStateStore, Protocol):
    """What the chat and workflow handlers write to: conversations, their
    log and session state (``SqlConversationStore``, or ``RedisChatStore``
    in Redis mode)."""

    def remove_participant(self, conversation_id: str, user_id: str) -> "Deferred[bool]":
        """Take the user out of the conversation; False if they were not in it."""


class PresenceStore(Protocol):
    """Who is online, refreshed by heartbeats, forgotten after a TTL."""

    def touch(self, user_id: str, connection_id: str) -> "Deferred[None]":
        """Mark the connection alive for another TTL."""

    def remove(self, user_id: str, connection_id: str) -> "Deferred[None]":
        """The connection closed: forget it at once."""

    def is_online(self, user_id: str) -> "Deferred[bool]": ...

    def online_users(self) -> "Deferred[list[str]]": ...


class HistoryStore(Protocol):
    """History pages, search, closing, retention and per-customer privacy."""

    def visible_conversation(self, conversation_id: str, user_id: str, role: str) -> "Deferred[Conversation | None]":
        """The conversation if the user may read it (admins: any; others:
        as a participant); None for both missing and not-yours."""

    def messages_page(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> "Deferred[list[Message]]":
        """Ascending by seq. Only ``before_seq``: the last ``limit`` below
        it; otherwise the first ``limit`` above ``after_seq`` (and below
        ``before_seq`` if given)."""

    def search(self, user_id: str | None, text: str, limit: int) -> "Deferred[list[Message]]":
        """Non-event messages containing every word of ``text``, newest
        first, in conversations ``user_id`` takes part in (all if None)."""

    def close_conversation(self, conversation_id: str, now: float) -> "Deferred[bool]": ...

    def retention_batch(self, cutoff: float, batch: int) -> "Deferred[int]":
        """Delete some of what belongs to conversations closed before
        ``cutoff`` (at most ``batch`` messages); rows deleted, 0 when done."""

    def erase_customer_batch(self, customer_id: str, batch: int, now: float = 0.0) -> "Deferred[int]":
        """Delete some of what is stored about a customer; 0 when done."""

    def export_customer(self, customer_id: str) -> "Deferred[dict[str, Any]]":
        """Every conversation of the customer with participants and messages."""

