"""What changes made over REST tell the consoles: an admin disabled or
edited an agent, a customer's profile was replaced, a canned response
changed."""

from __future__ import annotations

from supportchat.bus.interfaces import Delivery
from supportchat.handlers.queue import WorkQueue, agent_wire
from supportchat.storage.models import customer_key
from supportchat.workflow.models import Agent


class StaffNotices:
    """Callbacks of the REST APIs (agents, customers) into the live chat."""

    def __init__(self, queue: WorkQueue) -> None:
        self._q = queue

    async def profile_changed(self, customer_id: str) -> None:
        """A customer's profile was replaced (REST; ``customer_id`` is the
        customer's id, as profiles and clients know it): the staff in their open
        conversations get a ``profile`` frame naming the customer, and
        fetch it again over REST (with their role's masking; no profile
        data travels on the bus)."""
        q = self._q
        staff: set[str] = set()
        for conv in await q.store.list_conversations(customer_key(customer_id)):
            staff.update(p.user_id for p in await q.store.get_participants(conv.id) if p.role != "customer")
        if staff:
            await q.bus.publish(Delivery(frame={"type": "profile", "customer_id": customer_id},
                                         user_ids=tuple(sorted(staff))))

    async def canned_changed(self, scope: str, owner: str) -> None:
        """A canned response was created, changed or deleted (REST): a team's
        reach the staff of that team (and admins), a personal one its owner's
        consoles, as a ``canned`` frame; they list them again over REST (no
        text travels on the bus)."""
        frame = {"type": "canned", "scope": scope}
        if scope == "team":
            await self._q.bus.publish(Delivery(frame=dict(frame, team=owner), roles=("agent", "admin"), team=owner))
        else:
            await self._q.bus.publish(Delivery(frame=frame, user_ids=(owner,)))

    async def after_agent_change(self, agent: Agent, requeued: list[str]) -> None:
        """An admin edited an agent: a disabled one is disconnected everywhere
        (1008) and their conversations go back to the queue; capacity may
        have appeared."""
        q = self._q
        if agent.disabled:
            await q.bus.publish(Delivery(
                frame={"type": "error", "code": "account_disabled", "message": "this account was disabled"},
                user_ids=(agent.id,)))
        else:  # capacity, team or name changed: the agent's consoles (and every node's view of its team) learn it
            await q.bus.publish(Delivery(frame={"type": "agent_status", "agent": agent_wire(agent)},
                                         user_ids=(agent.id,)))
        for conversation_id in requeued:
            await q.back_in_queue(conversation_id, agent.id, agent.role, "agent_disabled")
        q.request_drain()
