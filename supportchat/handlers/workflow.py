"""The support workflow's hooks into the chat path (see ``hooks``):
admission of staff accounts, the workflow's part of ``hello``, the
lifecycle of a started conversation (created, queued, or held for the
bot), taking a conversation, and reopening a closed one when the customer
writes again."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from supportchat.auth import account_refusal
from supportchat.bus.interfaces import Delivery
from supportchat.handlers.assignment import note_frame
from supportchat.handlers.connections import ClientSession
from supportchat.handlers.hooks import Claim
from supportchat.handlers.messages import not_found
from supportchat.handlers.queue import QUEUE_IN_HELLO, WorkQueue, agent_wire, queue_entry
from supportchat.storage.models import EVENT, Conversation
from supportchat.wire.frames import FrameError
from supportchat.workflow.models import BOT, CLOSED, QUEUED, WorkflowError


class WorkflowChatHooks:
    """``WorkflowHooks`` with the support workflow on."""

    def __init__(self, queue: WorkQueue) -> None:
        self._q = queue

    def stop(self) -> None:
        self._q.stop()

    # -- sessions ----------------------------------------------------------
    async def admit(self, session: ClientSession) -> bool:
        if session.role == "customer":
            return True
        agent = await self._q.wf.get_agent(session.user_id)
        return account_refusal(agent, session.principal) is None  # as at the handshake (supportchat.http.authn)

    async def hello(self, session: ClientSession, open_conversations: list[str]) -> dict[str, Any]:
        """The agent's status, capacity, load and team queue; a customer's
        queue positions (of the open conversations the hello already read:
        no second query per connection)."""
        q = self._q
        if session.role == "customer":
            waiting = []
            for conv_id in open_conversations:
                item = await q.wf.get_item(conv_id)
                if item is not None and item.state == QUEUED:
                    waiting.append({"conversation": conv_id, "position": await q.position(conv_id, item.team_id)})
            return {"waiting": waiting} if waiting else {}
        q.agent_back(session.user_id)
        agent = await q.ensure_agent(session)
        await q.wf.mark_absent(agent.id, 0)  # back: nothing of theirs goes to the queue
        session.team = agent.team_id
        team = None if session.role == "admin" else agent.team_id
        queued = await q.wf.list_items(QUEUED, None, team, QUEUE_IN_HELLO)
        return {"agent": agent_wire(agent), "queue": [queue_entry(i) for i in queued]}

    def session_closed(self, session: ClientSession) -> None:
        if session.role != "customer" and not list(self._q.registry.for_user(session.user_id)):
            self._q.agent_left(session.user_id)

    def observe(self, delivery: Delivery) -> None:
        """Every delivery this node sees: keep the closed cache fresh, queue
        what the bot handed off, follow team changes, and close the
        sockets of a disabled account."""
        q = self._q
        frame = delivery.frame
        if frame.get("type") == "message" and frame.get("kind") == EVENT:
            name = (frame.get("event") or {}).get("name")
            if name == "closed":
                q.remember(str(frame["conversation"]), float(frame.get("ts") or q.clock.seconds()))
            elif name in ("reopened", "assigned", "joined"):
                q.remember(str(frame["conversation"]), None)
            elif name == "handoff" and (frame.get("sender") or {}).get("role") == "bot":
                conv_id = str(frame["conversation"])
                q.background.run("workflow_handoff", lambda: Deferred.fromCoroutine(q.on_handoff(conv_id)))
        elif frame.get("type") == "agent_status" and isinstance(frame.get("agent"), dict):
            team, role = frame["agent"].get("team"), frame["agent"].get("role")
            for uid in delivery.user_ids:
                for s in q.registry.for_user(uid):
                    s.team = team  # team-scoped deliveries (inbox) follow an admin's change at once
                    if role is not None and s.role != role:
                        # An admin changed the account's role: the session's role is the token's,
                        # which the handshake now refuses (role_changed); sign in again.
                        s.close(1008, "role changed; sign in again")
        elif frame.get("type") == "error" and frame.get("code") == "account_disabled":
            for uid in delivery.user_ids:
                for s in q.registry.for_user(uid):
                    s.close(1008, "account disabled")

    # -- conversations -------------------------------------------------------
    async def check_start(self, session: ClientSession, team: str, ref: Any) -> None:
        """``start`` names a team that exists (or none): a conversation in an
        unknown team's queue would wait for agents that do not exist."""
        if team and team not in {t.id for t in await self._q.wf.list_teams()}:
            raise FrameError("not_found", "no such team", ref)

    async def enter(self, session: ClientSession, conv: Conversation, created: bool, team: str,
                    lang: str = "") -> None:
        """A new conversation is logged (``created``, then ``queued`` unless
        the bot answers first) before its work item can be taken: the log
        reads created, queued, assigned. ``created`` carries the visitor's
        language when the client said it (``start``'s ``lang``)."""
        q = self._q
        if created:
            data: dict[str, Any] = {"customer": {"id": session.principal.user_id}, "team": team}
            if lang:
                data["lang"] = lang
            await q.system_event(conv.id, "created", data, "The conversation was created", f"workflow:created:{conv.id}")
            if not q.bot_first:
                await q.queued(conv.id, team, "new", f"workflow:queued:{conv.id}:new")
        await q.wf.enqueue(conv.id, session.user_id, team, conv.created_at, BOT if q.bot_first else QUEUED)
        q.remember(conv.id, None)

    async def entered(self, session: ClientSession, conv: Conversation, created: bool) -> None:
        """Once the customer has the reply: the staff's inboxes, the
        position (none while the bot has it), after-hours, a drain."""
        q = self._q
        item = await q.wf.get_item(conv.id)
        if item is None:
            return
        if created:
            await q.inbox(conv.id, item)
        if item.state == QUEUED:
            await q.tell_position(item)
            if created:
                await q.after_hours(conv.id, item.queued_at)
                q.request_drain()

    async def claim(self, session: ClientSession, conv: Conversation, ref: Any) -> Claim:
        """An agent of the conversation's team takes it (or it is theirs
        already); an admin joins to observe without taking it."""
        q = self._q
        if session.role != "agent":
            return "observe"
        agent = await q.ensure_agent(session)
        if agent.team_id:
            item = await q.wf.get_item(conv.id)
            if item is not None and item.team_id != agent.team_id:
                raise not_found(ref)  # another team's conversation
        try:
            assignment = await q.wf.take(conv.id, conv.customer_id, session.user_id, q.clock.seconds())
        except WorkflowError as e:
            raise FrameError(e.code, str(e), ref) from None
        return "unchanged" if assignment is None else "assigned"

    async def claimed(self, conversation_id: str) -> None:
        await self._q.inbox(conversation_id)
        self._q.background.run("workflow_positions", self._q.publish_positions)

    # -- messages ------------------------------------------------------------
    async def staff_names(self, user_ids: set[str]) -> dict[str, str]:
        """Agents' and admins' display names from their accounts (at most 20 looked up per page)."""
        names: dict[str, str] = {}
        for user_id in sorted(user_ids)[:20]:
            agent = await self._q.wf.get_agent(user_id)
            if agent is not None and agent.name:
                names[user_id] = agent.name
        return names

    async def staff_notes(self, session: ClientSession, conversation_id: str, from_seq: int,
                          to_seq: int | None) -> list[dict[str, Any]]:
        """Staff only: the notes placed after messages ``from_seq``..``to_seq``,
        as ``note`` frames (author with the account's name); [] for customers."""
        if session.role not in ("agent", "admin"):
            return []
        out = []
        authors: dict[str, dict[str, Any]] = {}
        for note in await self._q.wf.notes(conversation_id, from_seq - 1):
            if to_seq is not None and note.after_seq > to_seq:
                break
            if note.author_id not in authors:
                agent = await self._q.wf.get_agent(note.author_id)
                authors[note.author_id] = {"id": note.author_id, "role": agent.role if agent else "agent",
                                           **({"name": agent.name} if agent and agent.name else {})}
            out.append(note_frame(note, authors[note.author_id], []))
        return out

    async def before_customer_message(self, session: ClientSession, conversation_id: str, ref: Any) -> None:
        """A customer writing to a closed conversation reopens it within
        ``reopen_window``; later it is refused (start a new one)."""
        q = self._q
        item = None
        if not q.knows(conversation_id):
            item = await q.wf.get_item(conversation_id)
            if item is None or item.customer_id != session.user_id:
                return  # the append decides (not_found)
            q.remember(conversation_id, item.closed_at if item.state == CLOSED else None)
        closed_at = q.closed_at(conversation_id)
        if closed_at is None:
            return
        now = q.clock.seconds()
        if now - closed_at > q.config.reopen_window:
            raise FrameError("conversation_closed",
                             "the conversation is closed; send start for a new conversation", ref)
        # Told before the item is queued again (so that no agent takes it
        # first), once per close: two racing messages record it once.
        closed = item or await q.wf.get_item(conversation_id)  # the cache may be stale: check the store
        if closed is not None and closed.state == CLOSED:
            entry = f"{conversation_id}:{closed_at!r}"
            await q.writer.event(conversation_id, session.user_id, session.role, "reopened",
                                 {"user": session.principal.to_wire()}, "The conversation was reopened",
                                 key=f"workflow:reopened:{entry}")
            await q.queued(conversation_id, closed.team_id, "reopened", f"workflow:queued:{entry}")
        reopened = await q.wf.reopen(conversation_id, now)
        q.remember(conversation_id, None)
        if reopened is not None:
            await q.entered_queue(conversation_id, reopened)
