"""Message frames: ``message`` (append, ack, deliver), ``sync``, ``read``
and ``typing``."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime

from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config import ChatConfig
from supportchat.handlers.connections import ClientSession
from supportchat.handlers.hooks import WorkflowHooks
from supportchat.handlers.router import FrameRouter
from supportchat.handlers.writer import MessageWriter
from supportchat.metrics import Metrics
from supportchat.storage.interfaces import ChatStore
from supportchat.storage.models import SENDER_NAME, TEXT, AppendRequest, AppendResult, StoreError, wire_id
from supportchat.wire.frames import FrameError, Read, SendMessage, Sync, Typing, reply


def not_found(ref: Any) -> FrameError:
    """One answer for "missing" and "not yours": existence is not revealed."""
    return FrameError("not_found", "no such conversation", ref)


class AttachmentClaims(Protocol):
    """How a message takes its uploads (``supportchat.attachments.service``)."""

    async def claim(self, sender_key: str, conversation_id: str, client_msg_id: str,
                    ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """What the message stores about each upload, once claimed for it;
        ``StoreError`` (``not_found`` for unknown, foreign or taken ids)."""


class NoAttachments:
    """Attachments off: every id is unknown."""

    async def claim(self, sender_key: str, conversation_id: str, client_msg_id: str,
                    ids: tuple[str, ...]) -> list[dict[str, Any]]:
        raise FrameError("not_found", "no such attachment")


def _same(frame: dict[str, Any]) -> dict[str, Any]:
    return frame


class MessageFrames:
    """Sending, catching up, read receipts and typing."""

    def __init__(self, clock: IReactorTime, store: ChatStore, writer: MessageWriter, bus: MessageBus,
                 metrics: Metrics, config: ChatConfig, hooks: WorkflowHooks,
                 attachments: AttachmentClaims | None = None,
                 links: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self._attachments: AttachmentClaims = attachments or NoAttachments()
        self._links = links or _same
        self._clock = clock
        self._store = store
        self._writer = writer
        self._bus = bus
        self._metrics = metrics
        self._config = config
        self._hooks = hooks

    def register(self, router: FrameRouter) -> None:
        router.register(SendMessage, self.send)
        router.register(Sync, self.sync)
        router.register(Read, self.read)
        router.register(Typing, self.typing)

    async def send(self, session: ClientSession, frame: SendMessage) -> None:
        """Append (durable, sequenced, idempotent by ``client_msg_id``),
        ack the sender, deliver to every other connection of every
        participant."""
        received = self._clock.seconds()
        self._metrics.messages_received.inc()
        if session.role == "customer":
            await self._hooks.before_customer_message(session, frame.conversation, frame.ref)
        data: dict[str, Any] | None = None
        if frame.attachments:
            data = {"attachments": await self._claim(session, frame)}
        if session.role != "customer" and session.principal.name:
            # Staff messages carry who wrote them (the visitor sees the agent's
            # name, also after a transfer); customers' names stay in profiles.
            data = {**(data or {}), SENDER_NAME: session.principal.name}
        request = AppendRequest(
            conversation_id=frame.conversation,
            sender_id=session.user_id,
            sender_role=session.role,
            kind=TEXT,
            body=frame.body,
            ts=received,
            client_msg_id=frame.client_msg_id,
            idempotency_window=float(self._config.idempotency_window),
            data=data,
        )
        try:
            await self._writer.write(request, exclude_connection=session.id,
                                     on_stored=lambda result: self._ack(session, frame, result, received))
        except StoreError as e:
            if e.code == "not_found":
                raise not_found(frame.ref) from None
            raise

    async def _claim(self, session: ClientSession, frame: SendMessage) -> list[dict[str, Any]]:
        """The uploads of ``frame``, claimed for it: only a participant's,
        only their own, each by one message (the same message again, a
        retry, claims them again). Unknown, foreign and taken ids all get
        the same ``not_found``."""
        await self.authorize(session, frame.conversation, frame.ref, write=True)
        try:
            return await self._attachments.claim(session.user_id, frame.conversation, frame.client_msg_id,
                                                 frame.attachments)
        except StoreError as e:
            if e.code == "not_found":
                raise FrameError("not_found", "no such attachment", frame.ref) from None
            raise FrameError(e.code, str(e), frame.ref) from None

    def _ack(self, session: ClientSession, frame: SendMessage, result: AppendResult, received: float) -> None:
        """The sender learns the message is durable: its seq, and whether it
        repeats an earlier ``client_msg_id``."""
        msg = result.message
        session.send(reply({
            "type": "ack",
            "conversation": msg.conversation_id,
            "client_msg_id": frame.client_msg_id,
            "msg_id": msg.msg_id,
            "seq": msg.seq,
            "ts": msg.ts,
            "duplicate": result.duplicate,
        }, frame.ref))
        self._metrics.messages_acked.inc()
        self._metrics.ack_latency.observe(max(0.0, self._clock.seconds() - received))
        if result.duplicate:
            self._metrics.messages_duplicate.inc()

    async def authorize(self, session: ClientSession, conversation_id: str, ref: Any, write: bool = False) -> list[str]:
        """The participants' principal keys, if the session's key is among
        them (it may see or, with ``write``, act in the conversation).
        Admins read any conversation; acting needs joining, for everyone."""
        participants = await self._store.get_participants(conversation_id)
        ids = [p.user_id for p in participants]
        if session.user_id in ids:
            return ids
        if not write and session.role == "admin" and await self._store.get_conversation(conversation_id) is not None:
            return ids
        raise not_found(ref)

    async def sync(self, session: ClientSession, frame: Sync) -> None:
        await self.authorize(session, frame.conversation, frame.ref)
        msgs = await self._store.get_messages(frame.conversation, frame.after_seq, frame.limit + 1)
        history: dict[str, Any] = {
            "type": "history",
            "conversation": frame.conversation,
            "messages": [self._links(m.to_wire()) for m in msgs[: frame.limit]],
            "has_more": len(msgs) > frame.limit,
        }
        staff = {m.sender_id for m in msgs[: frame.limit] if m.sender_role in ("agent", "admin")}
        if staff:
            # who wrote: the agents' display names, so every client shows people, not ids
            names = await self._hooks.staff_names(staff)
            if names:
                history["names"] = {wire_id(k): v for k, v in names.items()}
        if session.role != "customer":
            # staff only: the internal notes placed among these messages (after the last one when caught up)
            upto = None if not history["has_more"] else msgs[frame.limit - 1].seq
            notes = await self._hooks.staff_notes(session, frame.conversation, frame.after_seq, upto)
            if notes:
                history["notes"] = notes
        if not history["has_more"]:
            # Caught up: where the others have read to (Seen marks after a reload).
            positions = await self._store.read_positions(frame.conversation)
            history["read"] = [{"user_id": wire_id(u), "seq": s}
                               for u, s in sorted(positions.items()) if u != session.user_id and s > 0]
        session.send(reply(history, frame.ref))

    async def typing(self, session: ClientSession, frame: Typing) -> None:
        ids = await self.authorize(session, frame.conversation, frame.ref, write=True)
        others = tuple(u for u in ids if u != session.user_id)
        if others:
            await self._bus.publish(Delivery(
                frame={"type": "typing", "conversation": frame.conversation, "user_id": session.principal.user_id},
                user_ids=others,
            ))

    async def read(self, session: ClientSession, frame: Read) -> None:
        try:
            unread = await self._store.mark_read(session.user_id, frame.conversation, frame.seq)
        except StoreError:
            raise not_found(frame.ref) from None
        participants = await self._store.get_participants(frame.conversation)
        conv = await self._store.get_conversation(frame.conversation)
        seq = max(0, min(frame.seq, conv.last_seq if conv is not None else frame.seq))
        event = {"type": "read", "conversation": frame.conversation, "user_id": session.principal.user_id, "seq": seq}
        session.send(reply(dict(event, unread=unread), frame.ref))
        await self._bus.publish(Delivery(
            frame=event, user_ids=tuple(p.user_id for p in participants), exclude_connection=session.id
        ))
