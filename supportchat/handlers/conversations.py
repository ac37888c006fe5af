"""Conversation frames: ``start`` (a customer opens a conversation) and
``accept``/``take`` (staff join one; with the workflow on, an agent takes
it from the queue)."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.handlers.connections import ClientSession
from supportchat.handlers.hooks import WorkflowHooks
from supportchat.handlers.messages import not_found
from supportchat.handlers.router import FrameRouter
from supportchat.handlers.writer import MessageWriter
from supportchat.storage.interfaces import ChatStore
from supportchat.wire.frames import Accept, FrameError, Start, Take, reply


class ConversationFrames:
    """Opening and joining conversations."""

    def __init__(self, clock: IReactorTime, store: ChatStore, writer: MessageWriter, bus: MessageBus,
                 hooks: WorkflowHooks) -> None:
        self._clock = clock
        self._store = store
        self._writer = writer
        self._bus = bus
        self._hooks = hooks

    def register(self, router: FrameRouter, workflow: bool) -> None:
        router.register(Start, self.start)
        router.register(Accept, self.accept)
        if workflow:
            router.register(Take, self.accept)

    async def start(self, session: ClientSession, frame: Start) -> None:
        """The customer's open conversation (a new one if none is open);
        the reply comes once the workflow has it in the queue, so nobody
        can act on it before its lifecycle is in the log."""
        if session.role != "customer":
            raise FrameError("forbidden", "only customers start conversations", frame.ref)
        await self._hooks.check_start(session, frame.team, frame.ref)
        conv, created = await self._store.open_conversation(session.user_id, self._clock.seconds())
        await self._hooks.enter(session, conv, created, frame.team, frame.lang)
        session.send(reply({"type": "conversation", "conversation": conv.to_wire()}, frame.ref))
        await self._hooks.entered(session, conv, created)
        if created:
            await self._bus.publish(Delivery(
                frame={"type": "conversation", "conversation": conv.to_wire()},
                user_ids=(session.user_id,),
                roles=("agent", "admin"),
                exclude_connection=session.id,
            ))

    async def accept(self, session: ClientSession, frame: Accept | Take) -> None:
        """``accept`` and ``take`` are one action: staff join the
        conversation; with the workflow on, an agent of its team takes it
        (``assigned``), an admin joins to observe. Joining twice changes
        nothing. The reply is the conversation as it now is."""
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents accept conversations", frame.ref)
        conv = await self._store.get_conversation(frame.conversation)
        if conv is None or conv.status != "open":
            raise not_found(frame.ref)
        claim = await self._hooks.claim(session, conv, frame.ref)
        user = session.principal.to_wire()
        body = f"{session.principal.name or session.user_id} joined the conversation"
        if claim == "assigned":
            await self._writer.event(conv.id, session.user_id, session.role, "joined",
                                     {"user": user, "assigned": True, "by": "take"}, body, join=True)
            await self._hooks.claimed(conv.id)
        elif claim == "observe":
            await self._writer.event(conv.id, session.user_id, session.role, "joined", {"user": user}, body,
                                     join=True, if_joined="skip")
        fresh = await self._store.get_conversation(conv.id)
        session.send(reply({"type": "conversation", "conversation": (fresh or conv).to_wire()}, frame.ref))
