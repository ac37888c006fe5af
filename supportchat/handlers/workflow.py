"""The support workflow over the protocol: agent status, the queue with
automatic assignment, take, transfer, close, reopen and ratings.

Decisions (who works on what) are made atomically by the WorkflowStore;
what happened is then told as ``event`` messages appended through the same
chat store as every message (so in Redis mode they get their seq from the
Lua append) and fanned out on the bus. Knows nothing of Autobahn.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from supportchat.background import BackgroundTasks
from supportchat.bot.hours import BusinessHours
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config.model import WorkflowConfig
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.storage.interfaces import ConversationStore, PresenceStore
from supportchat.storage.models import EVENT, AppendRequest, AppendResult, Conflict, Conversation
from supportchat.workflow.models import ASSIGNED, BOT, CLOSED, QUEUED, Agent, Assignment, WorkflowError, WorkItem
from supportchat.workflow.store import WorkflowStore
from supportchat.ws.frames import Close, FrameError, Rate, SetStatus, Take, Transfer

log = Logger()

CACHE_MAX = 100_000
# Queued conversations listed in an agent's ``hello`` (oldest first).
QUEUE_IN_HELLO = 200


class WorkflowChatStore(ConversationStore, Protocol):
    def remove_participant(self, conversation_id: str, user_id: str) -> "Deferred[bool]": ...


def reply(frame: dict[str, Any], ref: Any) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


def account_allows(agent: Agent | None, issued_at: float | None) -> bool:
    """False for a disabled account, or a token issued before the account's
    tokens were revoked (disabling revokes them)."""
    if agent is None:
        return True
    if agent.disabled:
        return False
    return not (agent.tokens_valid_after and (issued_at is None or issued_at < int(agent.tokens_valid_after)))


def _not_found(ref: Any) -> FrameError:
    return FrameError("not_found", "no such conversation", ref)


class WorkflowHandler:
    """Workflow frames and the hooks the chat handler calls."""

    def __init__(
        self, clock: IReactorTime, store: WorkflowChatStore, workflow: WorkflowStore, bus: MessageBus,
        registry: ConnectionRegistry, presence: PresenceStore, background: BackgroundTasks, config: WorkflowConfig,
        bot_first: bool = False, hours: BusinessHours | None = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._wf = workflow
        self._bus = bus
        self._registry = registry
        self._presence = presence
        self._background = background
        self._config = config
        # The bot answers first: a new conversation is held for it (state
        # BOT, not queued) until its handoff event.
        self._bot_first = bot_first
        # Business hours ([bot] business_hours): outside them a conversation
        # entering the queue gets an automatic after-hours event.
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

    # -- hooks from the chat handler -------------------------------------
    async def admit(self, session: ClientSession) -> bool:
        """May this connection open? (Disabled agents and revoked tokens may not.)"""
        if session.role == "customer":
            return True
        agent = await self._wf.get_agent(session.user_id)
        return account_allows(agent, session.principal.issued_at)

    async def hello(self, session: ClientSession) -> dict[str, Any]:
        """Extra ``hello`` fields: the agent's status, capacity and load; a
        customer's queue positions."""
        if session.role == "customer":
            waiting = []
            for conv in await self._store.list_conversations(session.user_id):
                item = await self._wf.get_item(conv.id)
                if item is not None and item.state == QUEUED:
                    waiting.append({"conversation": conv.id, "position": await self._position(conv.id, item.team_id)})
            return {"waiting": waiting} if waiting else {}
        timer = self._offline_timers.pop(session.user_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        agent = await self._ensure(session)
        await self._wf.mark_absent(agent.id, 0)  # back: nothing of theirs goes to the queue
        session.team = agent.team_id
        team = None if session.role == "admin" else agent.team_id
        queued = await self._wf.list_items(QUEUED, None, team, QUEUE_IN_HELLO)
        return {"agent": self._agent_wire(agent), "queue": [self._queue_entry(i) for i in queued]}

    def on_session_closed(self, session: ClientSession) -> None:
        """After the agent's last connection has been gone ``offline_grace``
        seconds (on every node: presence), they are set offline."""
        if session.role == "customer" or list(self._registry.for_user(session.user_id)):
            return
        old = self._offline_timers.pop(session.user_id, None)
        if old is not None and old.active():
            old.cancel()
        self._offline_timers[session.user_id] = self._clock.callLater(
            self._config.offline_grace, self._grace_over, session.user_id)

    def _grace_over(self, user_id: str) -> None:
        self._offline_timers.pop(user_id, None)
        self._background.run("workflow_offline", lambda: Deferred.fromCoroutine(self._maybe_offline(user_id)))

    async def _maybe_offline(self, user_id: str) -> None:
        if list(self._registry.for_user(user_id)) or await self._presence.is_online(user_id):
            return
        agent = await self._wf.get_agent(user_id)
        if agent is not None and agent.status != "offline":
            await self._wf.set_status(user_id, "offline")
        await self._wf.mark_absent(user_id, self._clock.seconds() - self._config.offline_grace)

    def observe(self, delivery: Delivery) -> None:
        """Every delivery this node sees: keep the closed cache fresh, and
        close the sockets of a disabled account."""
        frame = delivery.frame
        if frame.get("type") == "message" and frame.get("kind") == EVENT:
            name = (frame.get("event") or {}).get("name")
            if name == "closed":
                self._remember(str(frame["conversation"]), float(frame.get("ts") or self._clock.seconds()))
            elif name in ("reopened", "assigned", "joined"):
                self._remember(str(frame["conversation"]), None)
            elif name == "handoff" and (frame.get("sender") or {}).get("role") == "bot":
                conv_id = str(frame["conversation"])
                self._background.run("workflow_handoff", lambda: Deferred.fromCoroutine(self.on_handoff(conv_id)))
        elif frame.get("type") == "agent_status" and isinstance(frame.get("agent"), dict):
            team = frame["agent"].get("team")
            for uid in delivery.user_ids:
                for s in self._registry.for_user(uid):
                    s.team = team  # team-scoped deliveries (inbox) follow an admin's change at once
        elif frame.get("type") == "error" and frame.get("code") == "account_disabled":
            for uid in delivery.user_ids:
                for s in self._registry.for_user(uid):
                    s.close(1008, "account disabled")

    def _remember(self, conversation_id: str, closed_at: float | None) -> None:
        self._closed[conversation_id] = closed_at
        self._closed.move_to_end(conversation_id)
        while len(self._closed) > CACHE_MAX:
            self._closed.popitem(last=False)

    async def check_team(self, team: str, ref: Any) -> None:
        """``start`` names a team that exists (or none): a conversation in an
        unknown team's queue would wait for agents that do not exist."""
        if team and team not in {t.id for t in await self._wf.list_teams()}:
            raise FrameError("not_found", "no such team", ref)

    async def on_started(self, session: ClientSession, conv: Conversation, created: bool, team: str,
                         answer: Callable[[], None] = lambda: None) -> None:
        """A customer's ``start``: queue a new conversation, tell the position
        (with the bot first: hold it for the bot, no position yet).
        ``answer`` sends the ``conversation`` reply, once it is queued."""
        if created:
            # Told before the item enters the queue, so that no agent can
            # take it first: the log reads created, queued, assigned.
            await self._system_event(conv.id, "created", {"customer": {"id": session.user_id}, "team": team},
                                     "The conversation was created", f"workflow:created:{conv.id}")
            if not self._bot_first:
                await self._queued(conv.id, team, "new", f"workflow:queued:{conv.id}:new")
        item = await self._wf.enqueue(conv.id, session.user_id, team, conv.created_at,
                                      BOT if self._bot_first else QUEUED)
        self._remember(conv.id, None)
        answer()
        if created:
            await self._inbox(conv.id, item)
        if item.state == QUEUED:
            await self._tell_position(item)
        if created and item.state == QUEUED:
            await self._after_hours(conv.id, item.queued_at)
            self.request_drain()

    async def on_handoff(self, conversation_id: str) -> None:
        """The bot handed the conversation off (its ``handoff`` event): it
        enters its team's queue, the customer gets a position, and the queue
        is drained. Idempotent: called by the bot node right after appending
        the event and by every node that observes the event."""
        now = self._clock.seconds()
        held = await self._wf.get_item(conversation_id)
        if held is not None and held.state == BOT:  # told before it is takeable (one handoff per conversation)
            await self._queued(conversation_id, held.team_id, "handoff", f"workflow:queued:{conversation_id}:handoff")
        item = await self._wf.handoff(conversation_id, now)
        if item is None:
            existing = await self._wf.get_item(conversation_id)
            if existing is None:  # started before the workflow knew it
                conv = await self._store.get_conversation(conversation_id)
                if conv is None or conv.status != "open":
                    return
                await self._queued(conv.id, "", "handoff", f"workflow:queued:{conv.id}:handoff")
                item = await self._wf.enqueue(conv.id, conv.customer_id, "", now)
            elif existing.state == QUEUED:
                self.request_drain()  # seen twice: nothing new, a drain is cheap
                return
            else:
                return
        self._remember(conversation_id, None)
        await self._inbox(conversation_id, item)
        await self._tell_position(item)
        await self._after_hours(conversation_id, item.queued_at)
        self.request_drain()

    async def _after_hours(self, conversation_id: str, queued_at: float) -> None:
        """Outside business hours: an ``after_hours`` event telling when
        agents work again (once per entry into the queue: keyed by it)."""
        if self._hours is None or not self._config.after_hours_reply:
            return
        now = self._clock.seconds()
        next_open = self._hours.next_open(now)
        if next_open is None or next_open <= now:
            return
        body = self._config.after_hours_text.replace("{next_open}", self._hours.describe(next_open))
        await self._system_event(conversation_id, "after_hours", {"next_open": next_open}, body,
                                 f"workflow:after_hours:{conversation_id}:{queued_at!r}")

    async def _queued(self, conversation_id: str, team_id: str, reason: str, key: str) -> None:
        """The ``queued`` event: the conversation enters its team's queue
        (once per entry: ``key`` names the entry)."""
        await self._system_event(conversation_id, "queued", {"team": team_id, "reason": reason},
                                 "The conversation is waiting for an agent", key)

    async def _tell_position(self, item: WorkItem) -> None:
        """The customer's connections get a ``queue`` frame with the place in
        the queue (none once it has been taken)."""
        position = await self._position(item.conversation_id, item.team_id)
        if position:
            await self._bus.publish(Delivery(
                frame={"type": "queue", "conversation": item.conversation_id, "position": position},
                user_ids=(item.customer_id,)))

    async def _system_event(self, conversation_id: str, name: str, data: dict[str, Any], body: str,
                            key: str) -> None:
        """An event from the workflow itself (sender ``workflow``, role
        ``system``), idempotent by ``key`` so that nodes observing the same
        change, or a retry, record it once."""
        await self._event(conversation_id, "workflow", "system", name, data, body, require_participant=False,
                          key=key)

    async def before_customer_message(self, session: ClientSession, conversation_id: str, ref: Any) -> None:
        """A customer writing to a closed conversation reopens it within
        ``reopen_window``; later it is refused (start a new one)."""
        item = None
        if conversation_id not in self._closed:
            item = await self._wf.get_item(conversation_id)
            if item is None or item.customer_id != session.user_id:
                return  # the append decides (not_found)
            self._remember(conversation_id, item.closed_at if item.state == CLOSED else None)
        closed_at = self._closed.get(conversation_id)
        if closed_at is None:
            return
        now = self._clock.seconds()
        if now - closed_at > self._config.reopen_window:
            raise FrameError("conversation_closed",
                             "the conversation is closed; send start for a new conversation", ref)
        # Told before the item is queued again (so that no agent takes it
        # first), once per close: two racing messages record it once.
        closed = item or await self._wf.get_item(conversation_id)  # the cache may be stale: check the store
        if closed is not None and closed.state == CLOSED:
            entry = f"{conversation_id}:{closed_at!r}"
            await self._event(conversation_id, session.user_id, session.role, "reopened",
                              {"user": session.principal.to_wire()}, "The conversation was reopened",
                              key=f"workflow:reopened:{entry}")
            await self._queued(conversation_id, closed.team_id, "reopened", f"workflow:queued:{entry}")
        reopened = await self._wf.reopen(conversation_id, now)
        self._remember(conversation_id, None)
        if reopened is not None:
            await self._inbox(conversation_id, reopened)
            await self._tell_position(reopened)
            await self._after_hours(conversation_id, reopened.queued_at)
            self.request_drain()

    # -- frames ----------------------------------------------------------
    async def on_status(self, session: ClientSession, frame: SetStatus) -> None:
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents have a status", frame.ref)
        await self._ensure(session)
        agent = await self._wf.set_status(session.user_id, frame.status)
        if agent is None or agent.disabled:
            raise FrameError("forbidden", "this account is disabled", frame.ref)
        session.send(reply({"type": "agent_status", "agent": self._agent_wire(agent)}, frame.ref))
        if frame.status == "online":
            self.request_drain()

    async def on_take(self, session: ClientSession, frame: Take, event_name: str = "joined") -> None:
        """``take`` (and ``accept``): an agent takes the conversation from
        the queue; an admin joins to observe without taking it."""
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents accept conversations", frame.ref)
        conv = await self._store.get_conversation(frame.conversation)
        if conv is None or conv.status != "open":
            raise _not_found(frame.ref)
        user = session.principal.to_wire()
        name = session.principal.name or session.user_id
        if session.role == "agent":
            agent = await self._ensure(session)
            if agent.team_id:
                item = await self._wf.get_item(conv.id)
                if item is not None and item.team_id != agent.team_id:
                    raise _not_found(frame.ref)  # another team's conversation
            try:
                assignment = await self._wf.take(conv.id, conv.customer_id, session.user_id, self._clock.seconds())
            except WorkflowError as e:
                raise FrameError(e.code, str(e), frame.ref) from None
            if assignment is not None:
                await self._event(conv.id, session.user_id, session.role, event_name,
                                  {"user": user, "assigned": True, "by": "take"},
                                  f"{name} joined the conversation", join=True)
                await self._inbox(conv.id)
                self._background.run("workflow_positions", self.publish_positions)
        else:
            try:
                await self._event(conv.id, session.user_id, session.role, event_name, {"user": user},
                                  f"{name} joined the conversation", join=True, allow_rejoin=False)
            except Conflict:
                pass  # already a participant: accepting again changes nothing
        fresh = await self._store.get_conversation(conv.id)
        session.send(reply({"type": "conversation", "conversation": (fresh or conv).to_wire()}, frame.ref))

    async def _assigned_item(self, session: ClientSession, conversation_id: str, ref: Any) -> Any:
        """The open work item the session may act on as its agent (or admin)."""
        item = await self._wf.get_item(conversation_id)
        if item is None or item.state == CLOSED:
            raise _not_found(ref)
        if session.role == "admin":
            return item
        if session.role == "agent" and item.state == ASSIGNED and item.agent_id == session.user_id:
            return item
        raise _not_found(ref)

    async def on_transfer(self, session: ClientSession, frame: Transfer) -> None:
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents transfer conversations", frame.ref)
        await self._assigned_item(session, frame.conversation, frame.ref)
        now = self._clock.seconds()
        try:
            before, after = await self._wf.transfer(
                frame.conversation, frame.to_agent, frame.to_team, session.user_id, frame.note, now)
        except WorkflowError as e:
            raise FrameError(e.code, str(e), frame.ref) from None
        data: dict[str, Any] = {"from": {"id": before.agent_id} if before.agent_id else None, "team": after.team_id,
                                "by": session.principal.to_wire()}
        if after.state == ASSIGNED and after.agent_id is not None:
            target = await self._wf.get_agent(after.agent_id)
            data["to"] = self._user(target, after.agent_id)
            await self._event(frame.conversation, after.agent_id, target.role if target else "agent", "transferred",
                              data, "The conversation was transferred", join=True)
        else:
            data["to"] = None
            await self._event(frame.conversation, session.user_id, session.role, "transferred", data,
                              "The conversation was transferred to a team", require_participant=False)
        if before.agent_id and before.agent_id != after.agent_id:
            await self._store.remove_participant(frame.conversation, before.agent_id)
        await self._inbox(frame.conversation, after)
        if after.state == ASSIGNED and after.agent_id is not None and after.agent_id != before.agent_id:
            await self._tell_assigned(frame.conversation, after.agent_id)
        if frame.note and after.agent_id:
            await self._bus.publish(Delivery(frame={
                "type": "note", "conversation": frame.conversation, "author": session.principal.to_wire(),
                "body": frame.note, "ts": now,
            }, user_ids=(after.agent_id,)))
        session.send(reply({"type": "transferred", "conversation": frame.conversation, "item": after.to_wire()},
                           frame.ref))
        if after.state == QUEUED:
            self.request_drain()

    async def on_close(self, session: ClientSession, frame: Close) -> None:
        conv = await self._store.get_conversation(frame.conversation)
        if conv is None:
            raise _not_found(frame.ref)
        if session.role == "customer":
            if conv.customer_id != session.user_id:
                raise _not_found(frame.ref)
        else:
            await self._assigned_item(session, frame.conversation, frame.ref)
        now = self._clock.seconds()
        before = await self._wf.close(frame.conversation, now)
        if before is None:
            if conv.status == "open":  # never queued (workflow added later)
                await self._wf.enqueue(conv.id, conv.customer_id, "", conv.created_at)
                before = await self._wf.close(frame.conversation, now)
            if before is None:
                raise FrameError("conflict", "the conversation is already closed", frame.ref)
        self._remember(frame.conversation, now)
        await self._event(frame.conversation, session.user_id, session.role, "closed",
                          {"by": session.principal.to_wire()}, "The conversation was closed",
                          require_participant=False)
        session.send(reply({"type": "closed", "conversation": frame.conversation}, frame.ref))
        await self._inbox(frame.conversation)
        if before.state == ASSIGNED:
            self.request_drain()
        elif before.state == QUEUED:
            self._background.run("workflow_positions", self.publish_positions)

    async def on_rate(self, session: ClientSession, frame: Rate) -> None:
        if session.role != "customer":
            raise FrameError("forbidden", "only the customer rates a conversation", frame.ref)
        item = await self._wf.get_item(frame.conversation)
        if item is None or item.customer_id != session.user_id:
            raise _not_found(frame.ref)
        if not await self._wf.rate(frame.conversation, frame.rating, frame.comment, self._clock.seconds()):
            raise FrameError("conflict", "a conversation is rated after it is closed", frame.ref)
        session.send(reply({"type": "rated", "conversation": frame.conversation, "rating": frame.rating}, frame.ref))

    async def profile_changed(self, customer_id: str) -> None:
        """A customer's profile was replaced (REST): the staff in their open
        conversations get a ``profile`` frame naming the customer, and
        fetch it again over REST (with their role's masking; no profile
        data travels on the bus)."""
        staff: set[str] = set()
        for conv in await self._store.list_conversations(customer_id):
            staff.update(p.user_id for p in await self._store.get_participants(conv.id) if p.role != "customer")
        if staff:
            await self._bus.publish(Delivery(frame={"type": "profile", "customer_id": customer_id},
                                             user_ids=tuple(sorted(staff))))

    async def after_agent_change(self, agent: Agent, requeued: list[str]) -> None:
        """An admin edited an agent: a disabled one is disconnected everywhere
        (1008) and their conversations go back to the queue; capacity may
        have appeared."""
        if agent.disabled:
            await self._bus.publish(Delivery(
                frame={"type": "error", "code": "account_disabled", "message": "this account was disabled"},
                user_ids=(agent.id,)))
        else:  # capacity, team or name changed: the agent's consoles (and every node's view of its team) learn it
            await self._bus.publish(Delivery(frame={"type": "agent_status", "agent": self._agent_wire(agent)},
                                             user_ids=(agent.id,)))
        for conversation_id in requeued:
            await self._back_in_queue(conversation_id, agent.id, agent.role, "agent_disabled")
        self.request_drain()

    async def sweep_agents(self) -> None:
        """From the workflow timer, on every node: agents connected nowhere
        (presence) are recorded absent; absent for ``offline_grace`` they
        are set offline (also when the node that held their connection
        died, so its grace timer never ran); absent for
        ``requeue_offline_after`` their conversations go back to the queue,
        first in line. An agent who chose "offline" but is still connected
        keeps what they are working on. The requeue is atomic in the store:
        one node moves each conversation."""
        now = self._clock.seconds()
        requeue: list[str] = []
        for agent, absent_since in await self._wf.watched_agents():
            if list(self._registry.for_user(agent.id)) or await self._presence.is_online(agent.id):
                if absent_since:
                    await self._wf.mark_absent(agent.id, 0)
                continue
            if not absent_since:
                await self._wf.mark_absent(agent.id, now)
                continue
            away = now - absent_since
            if agent.status != "offline" and away >= self._config.offline_grace:
                await self._wf.set_status(agent.id, "offline")
            if agent.load > 0 and self._config.requeue_offline_after and away >= self._config.requeue_offline_after:
                requeue.append(agent.id)
        if not requeue:
            return
        moved = await self._wf.requeue_absent(now, self._config.requeue_offline_after, requeue)
        for conversation_id, agent_id in moved:
            await self._back_in_queue(conversation_id, agent_id, "agent", "agent_offline")
        if moved:
            self.request_drain()

    async def _back_in_queue(self, conversation_id: str, agent_id: str, role: str, reason: str) -> None:
        """An agent's conversation is queued again: the ``queued`` event, the
        agent leaves the participants, the staff and the customer are told."""
        await self._event(conversation_id, agent_id, role, "queued", {"from": {"id": agent_id}, "reason": reason},
                          "The conversation is back in the queue", require_participant=False)
        await self._store.remove_participant(conversation_id, agent_id)
        self._remember(conversation_id, None)
        item = await self._wf.get_item(conversation_id)
        if item is not None:
            await self._inbox(conversation_id, item)
            await self._tell_position(item)

    # -- the queue -------------------------------------------------------
    def request_drain(self) -> None:
        """Assign what can be assigned; coalesced (one drain at a time per
        node, run again if asked while running)."""
        if self._draining:
            self._drain_again = True
            return
        self._draining = True
        self._background.run("workflow_drain", lambda: Deferred.fromCoroutine(self._drain()))

    async def _drain(self) -> None:
        try:
            while True:
                self._drain_again = False
                assignments = await self._wf.assign_next(self._clock.seconds(), self._config.assign_batch)
                for a in assignments:
                    await self._announce(a)
                if assignments:
                    await self.publish_positions()
                if not assignments and not self._drain_again:
                    break
        finally:
            self._draining = False

    async def _announce(self, a: Assignment) -> None:
        agent = await self._wf.get_agent(a.agent_id)
        user = self._user(agent, a.agent_id)
        await self._event(a.conversation_id, a.agent_id, agent.role if agent else "agent", "assigned",
                          {"user": user, "assigned": True, "by": "auto"},
                          f"{user.get('name') or a.agent_id} was assigned", join=True)
        await self._tell_assigned(a.conversation_id, a.agent_id)
        await self._inbox(a.conversation_id)

    async def _tell_assigned(self, conversation_id: str, agent_id: str) -> None:
        """The agent's consoles get the conversation (``assigned: true``)."""
        conv = await self._store.get_conversation(conversation_id)
        if conv is not None:
            await self._bus.publish(Delivery(
                frame={"type": "conversation", "conversation": conv.to_wire(), "assigned": True},
                user_ids=(agent_id,)))

    async def _inbox(self, conversation_id: str, item: WorkItem | None = None) -> None:
        """Tell the staff of the conversation's team (and admins) where it
        now is in the workflow, so that every console's queue stays live:
        an ``inbox`` frame after each change of state, agent or team."""
        if item is None:
            item = await self._wf.get_item(conversation_id)
            if item is None:
                return
        await self._bus.publish(Delivery(frame={"type": "inbox", "item": item.to_wire()},
                                         roles=("agent", "admin"), team=item.team_id))

    @staticmethod
    def _queue_entry(item: WorkItem) -> dict[str, Any]:
        """A queued conversation as ``hello.queue`` lists it."""
        return {"id": item.conversation_id, "customer_id": item.customer_id, "status": "queued",
                "team": item.team_id, "queued_at": item.queued_at, "created_at": item.queued_at}

    async def publish_positions(self) -> None:
        """Queue positions to waiting customers (first queue_updates_max of each team)."""
        queued = await self._wf.list_items(QUEUED, None, None, 10_000)
        counters: dict[str, int] = {}
        for item in queued:
            pos = counters[item.team_id] = counters.get(item.team_id, 0) + 1
            if pos <= self._config.queue_updates_max:
                await self._bus.publish(Delivery(
                    frame={"type": "queue", "conversation": item.conversation_id, "position": pos},
                    user_ids=(item.customer_id,)))

    async def _position(self, conversation_id: str, team_id: str) -> int:
        queued = await self._wf.list_items(QUEUED, None, team_id, 10_000)
        for i, item in enumerate(queued):
            if item.conversation_id == conversation_id:
                return i + 1
        return 0

    # -- helpers ---------------------------------------------------------
    async def _ensure(self, session: ClientSession) -> Agent:
        return await self._wf.ensure_agent(session.user_id, session.role, session.principal.name or session.user_id,
                                           self._config.default_capacity, self._clock.seconds())

    @staticmethod
    def _agent_wire(agent: Agent) -> dict[str, Any]:
        return {"status": agent.status, "capacity": agent.capacity, "load": agent.load, "team": agent.team_id}

    @staticmethod
    def _user(agent: Agent | None, agent_id: str) -> dict[str, Any]:
        if agent is None:
            return {"id": agent_id, "role": "agent"}
        return {"id": agent.id, "role": agent.role, "name": agent.name}

    async def _event(
        self, conversation_id: str, sender_id: str, sender_role: str, name: str, data: dict[str, Any], body: str,
        join: bool = False, require_participant: bool = True, allow_rejoin: bool = True, key: str | None = None,
    ) -> AppendResult:
        """Append a lifecycle event through the chat store and fan it out
        (``key``: idempotency key, recorded once per sender)."""
        request = AppendRequest(
            conversation_id=conversation_id, sender_id=sender_id, sender_role=sender_role, kind=EVENT, body=body,
            ts=self._clock.seconds(), data=dict(data, name=name), join=join,
            require_participant=require_participant, client_msg_id=key,
        )
        try:
            result = await self._store.append(request)
        except Conflict:
            if not allow_rejoin:
                raise
            result = await self._store.append(replace(request, join=False))
        if not result.duplicate:
            await self._bus.publish(Delivery(frame=result.message.to_wire(),
                                             user_ids=tuple(p.user_id for p in result.participants)))
        return result
