"""The queue: entering it (``queued`` events, positions, after-hours
replies, the bot's handoff), automatic assignment (coalesced drains), the
``inbox`` frames that keep every console's queue live, and the timers that
notice agents who left (offline grace, sweeps that requeue their work).

Decisions are made atomically by the ``WorkflowStore``; what happened is
told as events through the message writer and as frames on the bus."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config.model import WorkflowConfig
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.handlers.writer import MessageWriter
from supportchat.storage.interfaces import ChatStore, PresenceStore
from supportchat.storage.models import wire_id
from supportchat.hours import BusinessHours
from supportchat.workflow.models import BOT, QUEUED, Agent, Assignment, WorkItem
from supportchat.workflow.store import WorkflowStore

# Conversations whose open/closed state a node remembers.
CACHE_MAX = 100_000
# Queued conversations listed in an agent's ``hello`` (oldest first).
QUEUE_IN_HELLO = 200


def agent_wire(agent: Agent) -> dict[str, Any]:
    """An agent's status as ``agent_status`` and ``hello.agent`` carry it."""
    return {"status": agent.status, "capacity": agent.capacity, "load": agent.load, "team": agent.team_id,
            "role": agent.role}


def user_wire(agent: Agent | None, agent_id: str) -> dict[str, Any]:
    if agent is None:
        return {"id": agent_id, "role": "agent"}
    return {"id": agent.id, "role": agent.role, "name": agent.name}


def queue_entry(item: WorkItem) -> dict[str, Any]:
    """A queued conversation as ``hello.queue`` lists it."""
    return {"id": item.conversation_id, "customer_id": wire_id(item.customer_id), "status": "queued",
            "team": item.team_id, "queued_at": item.queued_at, "created_at": item.queued_at}


class WorkQueue:
    """Queue entry, assignment, live inbox and the agents' absence timers."""

    def __init__(
        self, clock: IReactorTime, store: ChatStore, workflow: WorkflowStore, writer: MessageWriter,
        bus: MessageBus, registry: ConnectionRegistry, presence: PresenceStore, background: BackgroundTasks,
        config: WorkflowConfig, bot_first: bool = False, hours: BusinessHours | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.wf = workflow
        self.writer = writer
        self.bus = bus
        self.registry = registry
        self.presence = presence
        self.background = background
        self.config = config
        # The bot answers first: a new conversation is held for it (state
        # BOT, not queued) until its handoff event.
        self.bot_first = bot_first
        # Business hours: outside them a conversation entering the queue
        # gets an automatic after-hours event.
        self._hours = hours
        # conversation -> closed_at (None: open), as this node last learnt it.
        self._closed: OrderedDict[str, float | None] = OrderedDict()
        self._draining = False
        self._drain_again = False
        self._offline_timers: dict[str, IDelayedCall] = {}

    def stop(self) -> None:
        """Shutdown: forget pending offline timers."""
        for timer in self._offline_timers.values():
            if timer.active():
                timer.cancel()
        self._offline_timers.clear()

    # -- what this node knows of open and closed conversations -----------
    def remember(self, conversation_id: str, closed_at: float | None) -> None:
        self._closed[conversation_id] = closed_at
        self._closed.move_to_end(conversation_id)
        while len(self._closed) > CACHE_MAX:
            self._closed.popitem(last=False)

    def knows(self, conversation_id: str) -> bool:
        return conversation_id in self._closed

    def closed_at(self, conversation_id: str) -> float | None:
        return self._closed.get(conversation_id)

    # -- events and frames -------------------------------------------------
    async def system_event(self, conversation_id: str, name: str, data: dict[str, Any], body: str,
                           key: str) -> None:
        """An event from the workflow itself (sender ``workflow``, role
        ``system``), idempotent by ``key`` so that nodes observing the same
        change, or a retry, record it once."""
        await self.writer.event(conversation_id, "workflow", "system", name, data, body, require_participant=False,
                                key=key)

    async def queued(self, conversation_id: str, team_id: str, reason: str, key: str) -> None:
        """The ``queued`` event: the conversation enters its team's queue
        (once per entry: ``key`` names the entry)."""
        await self.system_event(conversation_id, "queued", {"team": team_id, "reason": reason},
                                "The conversation is waiting for an agent", key)

    async def after_hours(self, conversation_id: str, queued_at: float) -> None:
        """Outside business hours: an ``after_hours`` event telling when
        agents work again (once per entry into the queue: keyed by it)."""
        if self._hours is None or not self.config.after_hours_reply:
            return
        now = self.clock.seconds()
        next_open = self._hours.next_open(now)
        if next_open is None or next_open <= now:
            return
        body = self.config.after_hours_text.replace("{next_open}", self._hours.describe(next_open))
        await self.system_event(conversation_id, "after_hours", {"next_open": next_open}, body,
                                f"workflow:after_hours:{conversation_id}:{queued_at!r}")

    async def inbox(self, conversation_id: str, item: WorkItem | None = None) -> None:
        """Tell the staff of the conversation's team (and admins) where it
        now is in the workflow, so that every console's queue stays live:
        an ``inbox`` frame after each change of state, agent or team."""
        if item is None:
            item = await self.wf.get_item(conversation_id)
            if item is None:
                return
        await self.bus.publish(Delivery(frame={"type": "inbox", "item": item.to_wire()},
                                        roles=("agent", "admin"), team=item.team_id))

    async def tell_assigned(self, conversation_id: str, agent_id: str) -> None:
        """The agent's consoles get the conversation (``assigned: true``)."""
        conv = await self.store.get_conversation(conversation_id)
        if conv is not None:
            await self.bus.publish(Delivery(
                frame={"type": "conversation", "conversation": conv.to_wire(), "assigned": True},
                user_ids=(agent_id,)))

    async def position(self, conversation_id: str, team_id: str) -> int:
        queued = await self.wf.list_items(QUEUED, None, team_id, 10_000)
        for i, item in enumerate(queued):
            if item.conversation_id == conversation_id:
                return i + 1
        return 0

    async def tell_position(self, item: WorkItem) -> None:
        """The customer's connections get a ``queue`` frame with the place in
        the queue (none once it has been taken)."""
        position = await self.position(item.conversation_id, item.team_id)
        if position:
            await self.bus.publish(Delivery(
                frame={"type": "queue", "conversation": item.conversation_id, "position": position},
                user_ids=(item.customer_id,)))

    async def publish_positions(self) -> None:
        """Queue positions to waiting customers (first queue_updates_max of each team)."""
        queued = await self.wf.list_items(QUEUED, None, None, 10_000)
        counters: dict[str, int] = {}
        for item in queued:
            pos = counters[item.team_id] = counters.get(item.team_id, 0) + 1
            if pos <= self.config.queue_updates_max:
                await self.bus.publish(Delivery(
                    frame={"type": "queue", "conversation": item.conversation_id, "position": pos},
                    user_ids=(item.customer_id,)))

    async def entered_queue(self, conversation_id: str, item: WorkItem) -> None:
        """After a conversation entered (or re-entered) the queue: the
        staff's inboxes, the customer's position, the after-hours reply,
        and a drain."""
        await self.inbox(conversation_id, item)
        await self.tell_position(item)
        await self.after_hours(conversation_id, item.queued_at)
        self.request_drain()

    # -- the bot's handoff -------------------------------------------------
    async def on_handoff(self, conversation_id: str) -> None:
        """The bot handed the conversation off (its ``handoff`` event): it
        enters its team's queue, the customer gets a position, and the queue
        is drained. Idempotent: called by the bot node right after appending
        the event and by every node that observes the event."""
        now = self.clock.seconds()
        held = await self.wf.get_item(conversation_id)
        if held is not None and held.state == BOT:  # told before it is takeable (one handoff per conversation)
            await self.queued(conversation_id, held.team_id, "handoff", f"workflow:queued:{conversation_id}:handoff")
        item = await self.wf.handoff(conversation_id, now)
        if item is None:
            existing = await self.wf.get_item(conversation_id)
            if existing is None:  # started before the workflow knew it
                conv = await self.store.get_conversation(conversation_id)
                if conv is None or conv.status != "open":
                    return
                await self.queued(conv.id, "", "handoff", f"workflow:queued:{conv.id}:handoff")
                item = await self.wf.enqueue(conv.id, conv.customer_id, "", now)
            elif existing.state == QUEUED:
                self.request_drain()  # seen twice: nothing new, a drain is cheap
                return
            else:
                return
        self.remember(conversation_id, None)
        await self.entered_queue(conversation_id, item)

    async def back_in_queue(self, conversation_id: str, agent_id: str, role: str, reason: str) -> None:
        """An agent's conversation is queued again: the ``queued`` event, the
        agent leaves the participants, the staff and the customer are told."""
        await self.writer.event(conversation_id, agent_id, role, "queued", {"from": {"id": agent_id}, "reason": reason},
                                "The conversation is back in the queue", require_participant=False)
        await self.store.remove_participant(conversation_id, agent_id)
        self.remember(conversation_id, None)
        item = await self.wf.get_item(conversation_id)
        if item is not None:
            await self.inbox(conversation_id, item)
            await self.tell_position(item)

    # -- assignment ----------------------------------------------------------
    def request_drain(self) -> None:
        """Assign what can be assigned; coalesced (one drain at a time per
        node, run again if asked while running)."""
        if self._draining:
            self._drain_again = True
            return
        self._draining = True
        self.background.run("workflow_drain", lambda: Deferred.fromCoroutine(self._drain()))

    async def _drain(self) -> None:
        try:
            while True:
                self._drain_again = False
                assignments = await self.wf.assign_next(self.clock.seconds(), self.config.assign_batch)
                for a in assignments:
                    await self._announce(a)
                if assignments:
                    await self.publish_positions()
                if not assignments and not self._drain_again:
                    break
        finally:
            self._draining = False

    async def _announce(self, a: Assignment) -> None:
        agent = await self.wf.get_agent(a.agent_id)
        user = user_wire(agent, a.agent_id)
        await self.writer.event(a.conversation_id, a.agent_id, agent.role if agent else "agent", "assigned",
                                {"user": user, "assigned": True, "by": "auto"},
                                f"{user.get('name') or a.agent_id} was assigned", join=True)
        await self.tell_assigned(a.conversation_id, a.agent_id)
        await self.inbox(a.conversation_id)

    def tick(self) -> None:
        """The workflow timer (every node): sweep the agents, drain the queue."""
        self.background.run("workflow_sweep_agents", lambda: Deferred.fromCoroutine(self.sweep_agents()))
        self.request_drain()

    # -- agents who leave ------------------------------------------------------
    async def ensure_agent(self, session: ClientSession) -> Agent:
        return await self.wf.ensure_agent(session.user_id, session.role, session.principal.name or session.user_id,
                                          self.config.default_capacity, self.clock.seconds())

    def agent_back(self, user_id: str) -> None:
        """The agent connected again: their offline timer is off."""
        timer = self._offline_timers.pop(user_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def agent_left(self, user_id: str) -> None:
        """The agent's last connection on this node closed: after
        ``offline_grace`` seconds without one anywhere (presence) they are
        set offline."""
        self.agent_back(user_id)
        self._offline_timers[user_id] = self.clock.callLater(self.config.offline_grace, self._grace_over, user_id)

    def _grace_over(self, user_id: str) -> None:
        self._offline_timers.pop(user_id, None)
        self.background.run("workflow_offline", lambda: Deferred.fromCoroutine(self._maybe_offline(user_id)))

    async def _maybe_offline(self, user_id: str) -> None:
        if list(self.registry.for_user(user_id)) or await self.presence.is_online(user_id):
            return
        agent = await self.wf.get_agent(user_id)
        if agent is not None and agent.status != "offline":
            await self.wf.set_status(user_id, "offline")
        await self.wf.mark_absent(user_id, self.clock.seconds() - self.config.offline_grace)

    async def sweep_agents(self) -> None:
        """From the workflow timer, on every node: agents connected nowhere
        (presence) are recorded absent; absent for ``offline_grace`` they
        are set offline (also when the node that held their connection
        died, so its grace timer never ran); absent for
        ``requeue_offline_after`` their conversations go back to the queue,
        first in line. An agent who chose "offline" but is still connected
        keeps what they are working on. The requeue is atomic in the store:
        one node moves each conversation."""
        now = self.clock.seconds()
        requeue: list[str] = []
        for agent, absent_since in await self.wf.watched_agents():
            if list(self.registry.for_user(agent.id)) or await self.presence.is_online(agent.id):
                if absent_since:
                    await self.wf.mark_absent(agent.id, 0)
                continue
            if not absent_since:
                await self.wf.mark_absent(agent.id, now)
                continue
            away = now - absent_since
            if agent.status != "offline" and away >= self.config.offline_grace:
                await self.wf.set_status(agent.id, "offline")
            if agent.load > 0 and self.config.requeue_offline_after and away >= self.config.requeue_offline_after:
                requeue.append(agent.id)
        if not requeue:
            return
        moved = await self.wf.requeue_absent(now, self.config.requeue_offline_after, requeue)
        for conversation_id, agent_id in moved:
            await self.back_in_queue(conversation_id, agent_id, "agent", "agent_offline")
        if moved:
            self.request_drain()
