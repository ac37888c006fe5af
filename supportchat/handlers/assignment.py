"""Assignment frames (registered only with the workflow on): an agent's
``status``, ``transfer`` with an internal note, internal ``note`` frames
with @mentions, ``close`` and the customer's ``rate``. ``take`` is the
same action as ``accept`` (``conversations``)."""

from __future__ import annotations

import re
from typing import Any

from supportchat.bus.interfaces import Delivery
from supportchat.handlers.connections import ClientSession
from supportchat.handlers.messages import not_found
from supportchat.handlers.queue import WorkQueue, agent_wire, user_wire
from supportchat.handlers.router import FrameRouter
from supportchat.wire.frames import AddNote, Close, FrameError, Rate, SetStatus, Transfer, reply
from supportchat.workflow.models import ASSIGNED, CLOSED, QUEUED, Note, WorkflowError, WorkItem

MENTION_RE = re.compile(r"(?<![\w@])@([A-Za-z0-9_.-]{1,64})")
MAX_MENTIONS = 10


def note_frame(note: Note, author: dict[str, Any], mentions: list[str]) -> dict[str, Any]:
    """The ``note`` frame: staff only, never in the message log."""
    return {"type": "note", "conversation": note.conversation_id, "id": note.id, "author": author, "body": note.body,
            "ts": note.ts, "after_seq": note.after_seq, "mentions": mentions}


class AssignmentFrames:
    """Who works on a conversation, and its end."""

    def __init__(self, queue: WorkQueue) -> None:
        self._q = queue

    def register(self, router: FrameRouter) -> None:
        router.register(SetStatus, self.status)
        router.register(Transfer, self.transfer)
        router.register(Close, self.close)
        router.register(Rate, self.rate)
        router.register(AddNote, self.note)

    async def status(self, session: ClientSession, frame: SetStatus) -> None:
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents have a status", frame.ref)
        q = self._q
        await q.ensure_agent(session)
        agent = await q.wf.set_status(session.user_id, frame.status)
        if agent is None or agent.disabled:
            raise FrameError("forbidden", "this account is disabled", frame.ref)
        session.send(reply({"type": "agent_status", "agent": agent_wire(agent)}, frame.ref))
        if frame.status == "online":
            q.request_drain()

    async def _assigned_item(self, session: ClientSession, conversation_id: str, ref: Any) -> WorkItem:
        """The open work item the session may act on as its agent (or admin)."""
        item = await self._q.wf.get_item(conversation_id)
        if item is None or item.state == CLOSED:
            raise not_found(ref)
        if session.role == "admin":
            return item
        if session.role == "agent" and item.state == ASSIGNED and item.agent_id == session.user_id:
            return item
        raise not_found(ref)

    async def _staff(self, conversation_id: str) -> set[str]:
        """The staff participants of a conversation (user keys; never its customer)."""
        return {p.user_id for p in await self._q.store.get_participants(conversation_id) if p.role != "customer"}

    async def _mentions(self, body: str) -> list[str]:
        """The enabled agents and admins named ``@id`` in ``body`` (at most MAX_MENTIONS)."""
        found: list[str] = []
        for name in MENTION_RE.findall(body):
            if name in found or len(found) >= MAX_MENTIONS:
                continue
            agent = await self._q.wf.get_agent(name)
            if agent is not None and not agent.disabled:
                found.append(agent.id)
        return found

    async def note(self, session: ClientSession, frame: AddNote) -> None:
        """An internal note: stored in the conversation's staff-only notes,
        placed after its last message, told to its staff and to the agents it
        @mentions; never to the customer (sync gives notes to staff only)."""
        if session.role not in ("agent", "admin"):
            raise not_found(frame.ref)  # customers never learn notes exist
        q = self._q
        conv = await q.store.get_conversation(frame.conversation)
        if conv is None:
            raise not_found(frame.ref)
        staff = await self._staff(frame.conversation)
        item = await q.wf.get_item(frame.conversation)
        assigned = item.agent_id if item is not None and item.state == ASSIGNED else None
        if session.role != "admin" and session.user_id not in staff and session.user_id != assigned:
            raise not_found(frame.ref)
        note = await q.wf.add_note(frame.conversation, session.user_id, frame.body, q.clock.seconds(), conv.last_seq)
        mentions = await self._mentions(frame.body)
        out = note_frame(note, session.principal.to_wire(), mentions)
        session.send(reply(dict(out), frame.ref))
        to = staff | set(mentions) | ({assigned} if assigned else set())
        to.discard(conv.customer_id)
        await q.bus.publish(Delivery(frame=out, user_ids=tuple(sorted(to)), exclude_connection=session.id))

    async def transfer(self, session: ClientSession, frame: Transfer) -> None:
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents transfer conversations", frame.ref)
        q = self._q
        await self._assigned_item(session, frame.conversation, frame.ref)
        now = q.clock.seconds()
        conv = await q.store.get_conversation(frame.conversation)
        try:
            before, after = await q.wf.transfer(
                frame.conversation, frame.to_agent, frame.to_team, session.user_id, frame.note, now,
                conv.last_seq if conv is not None else 0)
        except WorkflowError as e:
            raise FrameError(e.code, str(e), frame.ref) from None
        data: dict[str, Any] = {"from": {"id": before.agent_id} if before.agent_id else None, "team": after.team_id,
                                "by": session.principal.to_wire()}
        if after.state == ASSIGNED and after.agent_id is not None:
            target = await q.wf.get_agent(after.agent_id)
            data["to"] = user_wire(target, after.agent_id)
            await q.writer.event(frame.conversation, after.agent_id, target.role if target else "agent",
                                 "transferred", data, "The conversation was transferred", join=True)
        else:
            data["to"] = None
            await q.writer.event(frame.conversation, session.user_id, session.role, "transferred", data,
                                 "The conversation was transferred to a team", require_participant=False)
        if before.agent_id and before.agent_id != after.agent_id:
            await q.store.remove_participant(frame.conversation, before.agent_id)
        await q.inbox(frame.conversation, after)
        if after.state == ASSIGNED and after.agent_id is not None and after.agent_id != before.agent_id:
            await q.tell_assigned(frame.conversation, after.agent_id)
        if frame.note and after.agent_id:
            notes = await q.wf.notes(frame.conversation, conv.last_seq - 1 if conv is not None else -1)
            written = [n for n in notes if n.ts == now and n.author_id == session.user_id and n.body == frame.note]
            if written:
                await q.bus.publish(Delivery(frame=note_frame(written[-1], session.principal.to_wire(), []),
                                             user_ids=(after.agent_id,)))
        session.send(reply({"type": "transferred", "conversation": frame.conversation, "item": after.to_wire()},
                           frame.ref))
        if after.state == QUEUED:
            q.request_drain()

    async def close(self, session: ClientSession, frame: Close) -> None:
        q = self._q
        conv = await q.store.get_conversation(frame.conversation)
        if conv is None:
            raise not_found(frame.ref)
        if session.role == "customer":
            if conv.customer_id != session.user_id:
                raise not_found(frame.ref)
        else:
            await self._assigned_item(session, frame.conversation, frame.ref)
        now = q.clock.seconds()
        before = await q.wf.close(frame.conversation, now)
        if before is None:
            if conv.status == "open":  # never queued (workflow added later)
                await q.wf.enqueue(conv.id, conv.customer_id, "", conv.created_at)
                before = await q.wf.close(frame.conversation, now)
            if before is None:
                raise FrameError("conflict", "the conversation is already closed", frame.ref)
        q.remember(frame.conversation, now)
        await q.writer.event(frame.conversation, session.user_id, session.role, "closed",
                             {"by": session.principal.to_wire()}, "The conversation was closed",
                             require_participant=False)
        session.send(reply({"type": "closed", "conversation": frame.conversation}, frame.ref))
        await q.inbox(frame.conversation)
        if before.state == ASSIGNED:
            q.request_drain()
        elif before.state == QUEUED:
            q.background.run("workflow_positions", q.publish_positions)

    async def rate(self, session: ClientSession, frame: Rate) -> None:
        if session.role != "customer":
            raise FrameError("forbidden", "only the customer rates a conversation", frame.ref)
        q = self._q
        item = await q.wf.get_item(frame.conversation)
        if item is None or item.customer_id != session.user_id:
            raise not_found(frame.ref)
        if not await q.wf.rate(frame.conversation, frame.rating, frame.comment, q.clock.seconds()):
            raise FrameError("conflict", "a conversation is rated after it is closed", frame.ref)
        session.send(reply({"type": "rated", "conversation": frame.conversation, "rating": frame.rating}, frame.ref))
