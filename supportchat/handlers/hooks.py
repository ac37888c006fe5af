"""How the support workflow hooks into the chat path.

The chat handlers (sessions, conversations, messages) call these hooks at
fixed points and know nothing else of the workflow. With the workflow off
they get :class:`NoWorkflow`, whose hooks change nothing, and the
workflow's own frames are not registered with the router at all.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from supportchat.bus.interfaces import Delivery
from supportchat.handlers.connections import ClientSession
from supportchat.storage.models import Conversation

# What taking a conversation did: the agent got it assigned (an ``assigned``
# join is logged), the sender joins to observe (a plain join, nothing if
# already in), or nothing changed (it was theirs already).
Claim = Literal["assigned", "observe", "unchanged"]


class WorkflowHooks(Protocol):
    """The points where the workflow takes part in chat."""

    # -- sessions --
    async def admit(self, session: ClientSession) -> bool:
        """May this connection open? (Disabled accounts and revoked tokens may not.)"""

    async def hello(self, session: ClientSession, open_conversations: list[str]) -> dict[str, Any]:
        """Extra fields for the session's ``hello``; ``open_conversations``:
        the ids of the open conversations it has (already read for it)."""

    def session_closed(self, session: ClientSession) -> None:
        """A connection of this node closed."""

    def observe(self, delivery: Delivery) -> None:
        """Every delivery this node receives from the bus."""

    def stop(self) -> None:
        """Shutdown: cancel timers."""

    # -- conversations --
    async def check_start(self, session: ClientSession, team: str, ref: Any) -> None:
        """Before ``start`` creates anything: raise ``FrameError`` to refuse."""

    async def enter(self, session: ClientSession, conv: Conversation, created: bool, team: str,
                    lang: str = "") -> None:
        """``start`` opened ``conv``: before the customer is answered (so no
        one can act on it before its lifecycle is logged)."""

    async def entered(self, session: ClientSession, conv: Conversation, created: bool) -> None:
        """After the customer has the ``conversation`` reply."""

    async def claim(self, session: ClientSession, conv: Conversation, ref: Any) -> Claim:
        """``accept``/``take`` by an agent or admin: decide it (raise ``FrameError`` to refuse)."""

    async def claimed(self, conversation_id: str) -> None:
        """After the ``assigned`` join of a claim is logged."""

    # -- messages --
    async def before_customer_message(self, session: ClientSession, conversation_id: str, ref: Any) -> None:
        """A customer writes to ``conversation_id`` (a closed one may reopen, or refuse)."""

    async def staff_names(self, user_ids: set[str]) -> dict[str, str]:
        """For ``sync``: the display names of these staff senders (those known)."""

    async def staff_notes(self, session: ClientSession, conversation_id: str, from_seq: int,
                          to_seq: int | None) -> list[dict[str, Any]]:
        """For ``sync``: the internal notes placed after messages ``from_seq``
        to ``to_seq`` (None: no upper bound), for staff; always [] for a customer."""


class NoWorkflow:
    """The hooks when the support workflow is off: everyone is admitted,
    ``accept`` joins to observe, nothing is queued."""

    async def admit(self, session: ClientSession) -> bool:
        return True

    async def hello(self, session: ClientSession, open_conversations: list[str]) -> dict[str, Any]:
        return {}

    def session_closed(self, session: ClientSession) -> None:
        pass

    def observe(self, delivery: Delivery) -> None:
        pass

    def stop(self) -> None:
        pass

    async def check_start(self, session: ClientSession, team: str, ref: Any) -> None:
        pass

    async def enter(self, session: ClientSession, conv: Conversation, created: bool, team: str,
                    lang: str = "") -> None:
        pass

    async def entered(self, session: ClientSession, conv: Conversation, created: bool) -> None:
        pass

    async def claim(self, session: ClientSession, conv: Conversation, ref: Any) -> Claim:
        return "observe"

    async def claimed(self, conversation_id: str) -> None:
        pass

    async def before_customer_message(self, session: ClientSession, conversation_id: str, ref: Any) -> None:
        pass

    async def staff_names(self, user_ids: set[str]) -> dict[str, str]:
        return {}

    async def staff_notes(self, session: ClientSession, conversation_id: str, from_seq: int,
                          to_seq: int | None) -> list[dict[str, Any]]:
        return []
