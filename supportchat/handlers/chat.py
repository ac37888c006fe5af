"""The chat handler: authorization, durable append, ack, fan-out, sync.

A message's path: ``ws.protocol`` parses the frame -> ``ChatHandler.on_frame``
checks rights -> ``ConversationStore.append`` commits it (with its seq and
idempotency key) -> the ack goes to the sender -> a ``Delivery`` goes on the
bus -> every node's ``ConnectionRegistry`` pushes it to local sessions.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config import ChatConfig
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.metrics import Metrics
from supportchat.ratelimit import TokenBucket
from supportchat.storage.interfaces import ChatStore, PresenceStore
from supportchat.storage.models import (
    EVENT,
    TEXT,
    AppendRequest,
    Conflict,
    StoreError,
)
from supportchat.ws.frames import (
    Accept,
    ClientFrame,
    Close,
    Rate,
    SetStatus,
    Take,
    Transfer,
    FrameError,
    Ping,
    Pong,
    Read,
    SendMessage,
    Start,
    Sync,
    Typing,
    error_frame,
)

log = Logger()

QUEUE_LIMIT = 50


def reply(frame: dict[str, Any], ref: Any) -> dict[str, Any]:
    """A direct reply carries the client's ``ref`` when it sent one."""
    if ref is not None:
        frame["ref"] = ref
    return frame


def _not_found(ref: Any) -> FrameError:
    # One answer for "missing" and "not yours": existence is not revealed.
    return FrameError("not_found", "no such conversation", ref)


class ChatHandler:
    """Handles every client frame for the sessions of this node."""

    def __init__(
        self,
        clock: IReactorTime,
        store: ChatStore,
        bus: MessageBus,
        presence: PresenceStore,
        registry: ConnectionRegistry,
        metrics: Metrics,
        background: BackgroundTasks,
        config: ChatConfig,
        heartbeat: int,
        workflow: Any = None,
    ) -> None:
        # The support workflow (handlers/workflow.py), None when disabled.
        self._workflow = workflow
        self._clock = clock
        self._store = store
        self._bus = bus
        self._presence = presence
        self._registry = registry
        self._metrics = metrics
        self._background = background
        self._config = config
        self._heartbeat = heartbeat
        self._buckets: dict[str, TokenBucket] = {}
        self._last_touch: dict[str, float] = {}
        self._unsubscribe = bus.subscribe(self._on_delivery)

    def stop(self) -> None:
        self._unsubscribe()
        if self._workflow is not None:
            self._workflow.stop()

    def _on_delivery(self, delivery: Delivery) -> None:
        n = self._registry.deliver(delivery)
        if self._workflow is not None:
            self._workflow.observe(delivery)
        if n and delivery.frame.get("type") == "message":
            self._metrics.messages_delivered.inc(n)

    # -- lifecycle -----------------------------------------------------
    @inlineCallbacks
    def on_open(self, session: ClientSession) -> Any:
        """Register the session and send ``hello`` with the user's state."""
        self._registry.add(session)
        self._buckets[session.id] = TokenBucket(self._config.frame_rate, self._config.frame_burst, self._clock.seconds())
        self._touch(session, force=True)
        try:
            if self._workflow is not None and not (yield Deferred.fromCoroutine(self._workflow.admit(session))):
                session.ready = True
                session.send(error_frame("account_disabled", "this account is disabled or the token was revoked"))
                session.close(1008, "account disabled")
                return
            states = yield self._store.get_states(session.user_id)
            hello: dict[str, Any] = {
                "type": "hello",
                "user": session.principal.to_wire(),
                "heartbeat": self._heartbeat,
                "conversations": [
                    {
                        "id": s.conversation_id,
                        "status": s.status,
                        "last_seq": s.last_seq,
                        "last_msg_id": s.last_msg_id,
                        "last_ts": s.last_ts,
                        "unread": s.unread,
                        "last_read_seq": s.last_read_seq,
                    }
                    for s in states
                ],
            }
            if session.role in ("agent", "admin"):
                queue = yield self._store.list_unassigned(QUEUE_LIMIT)
                hello["queue"] = [c.to_wire() for c in queue]
            if self._workflow is not None:
                hello.update((yield Deferred.fromCoroutine(self._workflow.hello(session))))
        except Exception:
            log.failure("could not build hello for a session")
            session.ready = True
            session.send(error_frame("unavailable", "the server cannot load your conversations; reconnect shortly"))
            session.close(1011, "unavailable")
            return
        session.open_with(hello)

    def on_close(self, session: ClientSession) -> None:
        session.closed = True
        self._registry.remove(session)
        if self._workflow is not None:
            self._workflow.on_session_closed(session)
        self._buckets.pop(session.id, None)
        self._last_touch.pop(session.id, None)
        self._background.run("presence_remove", self._presence.remove, session.user_id, session.id)

    def on_heartbeat(self, session: ClientSession) -> None:
        """Any sign of life (ping, pong, frame) refreshes presence."""
        self._touch(session)

    def _touch(self, session: ClientSession, force: bool = False) -> None:
        now = self._clock.seconds()
        last = self._last_touch.get(session.id)
        # Refresh at most three times per TTL: enough to never lapse.
        if force or last is None or now - last >= self._config.presence_ttl / 3:
            self._last_touch[session.id] = now
            self._background.run("presence_touch", self._presence.touch, session.user_id, session.id)

    # -- frames --------------------------------------------------------
    def on_bad_frame(self, session: ClientSession, error: FrameError) -> None:
        self._send_error(session, error.code, error.message, error.ref)

    def on_frame(self, session: ClientSession, frame: ClientFrame) -> "Deferred[None]":
        """Handle one parsed frame; errors become ``error`` frames."""
        self._touch(session)
        bucket = self._buckets.get(session.id)
        if bucket is not None and not isinstance(frame, (Ping, Pong)) and not bucket.take(self._clock.seconds()):
            self._send_error(session, "rate_limited", f"too many frames; retry in {bucket.retry_after():.2f}s", frame.ref)
            return succeed(None)
        handler = {
            Ping: self._ping,
            Pong: self._pong,
            Start: self._start,
            Accept: self._accept,
            SendMessage: self._message,
            Sync: self._sync,
            Typing: self._typing,
            Read: self._read,
            SetStatus: self._workflow_frame,
            Take: self._workflow_frame,
            Transfer: self._workflow_frame,
            Close: self._workflow_frame,
            Rate: self._workflow_frame,
        }[type(frame)]
        d: Deferred[None] = Deferred.fromCoroutine(handler(session, frame))  # type: ignore[operator]

        def failed(reason: Failure) -> None:
            err = reason.value
            if isinstance(err, FrameError):
                self._send_error(session, err.code, err.message, err.ref)
            elif isinstance(err, StoreError):
                self._send_error(session, err.code, str(err), frame.ref, err.retry_after)
            else:
                log.failure("frame handling failed ({kind})", reason, kind=type(frame).__name__)
                self._send_error(session, "unavailable", "temporarily unable to handle this frame; retry", frame.ref)

        return d.addErrback(failed)

    def _send_error(self, session: ClientSession, code: str, message: str, ref: Any, retry_after: float | None = None) -> None:
        self._metrics.frame_errors.labels(code).inc()
        frame = error_frame(code, message, ref)
        if retry_after is not None:
            frame["retry_after"] = retry_after
        session.send(frame)

    async def _ping(self, session: ClientSession, frame: Ping) -> None:
        if frame.plain:
            session.send_encoded("pong")
        else:
            session.send(reply({"type": "pong"}, frame.ref))

    async def _pong(self, session: ClientSession, frame: Pong) -> None:
        """Nothing to answer: receiving it already refreshed presence."""

    async def _start(self, session: ClientSession, frame: Start) -> None:
        if session.role != "customer":
            raise FrameError("forbidden", "only customers start conversations", frame.ref)
        if self._workflow is not None:
            await self._workflow.check_team(frame.team, frame.ref)
        conv, created = await self._store.open_conversation(session.user_id, self._clock.seconds())
        body = conv.to_wire()

        def answer() -> None:
            session.send(reply({"type": "conversation", "conversation": body}, frame.ref))

        if self._workflow is not None:
            # The workflow answers once the conversation is in the queue:
            # nobody learns its id before then, so nobody can take it before
            # its created and queued events are in the log.
            await self._workflow.on_started(session, conv, created, frame.team, answer)
        else:
            answer()
        if created:
            await self._bus.publish(Delivery(
                frame={"type": "conversation", "conversation": body},
                user_ids=(session.user_id,),
                roles=("agent", "admin"),
                exclude_connection=session.id,
            ))

    async def _workflow_frame(self, session: ClientSession, frame: Any) -> None:
        if self._workflow is None:
            raise FrameError("bad_request", "the support workflow is not enabled on this server", frame.ref)
        handler = {
            SetStatus: self._workflow.on_status, Take: self._workflow.on_take, Transfer: self._workflow.on_transfer,
            Close: self._workflow.on_close, Rate: self._workflow.on_rate,
        }[type(frame)]
        await handler(session, frame)

    async def _accept(self, session: ClientSession, frame: Accept) -> None:
        if self._workflow is not None:
            await self._workflow.on_take(session, Take(frame.conversation, frame.ref))
            return
        if session.role not in ("agent", "admin"):
            raise FrameError("forbidden", "only agents accept conversations", frame.ref)
        conv = await self._store.get_conversation(frame.conversation)
        if conv is None or conv.status != "open":
            raise _not_found(frame.ref)
        name = session.principal.name or session.user_id
        request = AppendRequest(
            conversation_id=conv.id,
            sender_id=session.user_id,
            sender_role=session.role,
            kind=EVENT,
            body=f"{name} joined the conversation",
            ts=self._clock.seconds(),
            data={"name": "joined", "user": session.principal.to_wire()},
            join=True,
        )
        try:
            result = await self._store.append(request)
        except Conflict:
            pass  # already a participant: accepting again changes nothing
        else:
            await self._publish_message(result.message.to_wire(), [p.user_id for p in result.participants], None)
        fresh = await self._store.get_conversation(conv.id)
        session.send(reply({"type": "conversation", "conversation": (fresh or conv).to_wire()}, frame.ref))

    async def _message(self, session: ClientSession, frame: SendMessage) -> None:
        received = self._clock.seconds()
        self._metrics.messages_received.inc()
        if self._workflow is not None and session.role == "customer":
            await self._workflow.before_customer_message(session, frame.conversation, frame.ref)
        request = AppendRequest(
            conversation_id=frame.conversation,
            sender_id=session.user_id,
            sender_role=session.role,
            kind=TEXT,
            body=frame.body,
            ts=received,
            client_msg_id=frame.client_msg_id,
            idempotency_window=float(self._config.idempotency_window),
        )
        try:
            result = await self._store.append(request)
        except StoreError as e:
            if e.code == "not_found":
                raise _not_found(frame.ref) from None
            raise
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
            return
        await self._publish_message(msg.to_wire(), [p.user_id for p in result.participants], session.id)

    async def _publish_message(self, frame: dict[str, Any], user_ids: list[str], exclude: str | None) -> None:
        await self._bus.publish(Delivery(frame=frame, user_ids=tuple(user_ids), exclude_connection=exclude))

    async def _authorize(self, session: ClientSession, conversation_id: str, ref: Any, write: bool = False) -> list[str]:
        """The participants' ids, if the session may see (or, with
        ``write``, act in) the conversation. Admins read any conversation;
        acting needs joining, for everyone."""
        participants = await self._store.get_participants(conversation_id)
        ids = [p.user_id for p in participants]
        if session.user_id in ids:
            return ids
        if not write and session.role == "admin" and await self._store.get_conversation(conversation_id) is not None:
            return ids
        raise _not_found(ref)

    async def _sync(self, session: ClientSession, frame: Sync) -> None:
        await self._authorize(session, frame.conversation, frame.ref)
        msgs = await self._store.get_messages(frame.conversation, frame.after_seq, frame.limit + 1)
        history: dict[str, Any] = {
            "type": "history",
            "conversation": frame.conversation,
            "messages": [m.to_wire() for m in msgs[: frame.limit]],
            "has_more": len(msgs) > frame.limit,
        }
        if not history["has_more"]:
            # Caught up: where the others have read to (Seen marks after a reload).
            positions = await self._store.read_positions(frame.conversation)
            history["read"] = [{"user_id": u, "seq": s} for u, s in sorted(positions.items())
                               if u != session.user_id and s > 0]
        session.send(reply(history, frame.ref))

    async def _typing(self, session: ClientSession, frame: Typing) -> None:
        ids = await self._authorize(session, frame.conversation, frame.ref, write=True)
        others = tuple(u for u in ids if u != session.user_id)
        if others:
            await self._bus.publish(Delivery(
                frame={"type": "typing", "conversation": frame.conversation, "user_id": session.user_id},
                user_ids=others,
            ))

    async def _read(self, session: ClientSession, frame: Read) -> None:
        try:
            unread = await self._store.mark_read(session.user_id, frame.conversation, frame.seq)
        except StoreError:
            raise _not_found(frame.ref) from None
        participants = await self._store.get_participants(frame.conversation)
        conv = await self._store.get_conversation(frame.conversation)
        seq = max(0, min(frame.seq, conv.last_seq if conv is not None else frame.seq))
        event = {"type": "read", "conversation": frame.conversation, "user_id": session.user_id, "seq": seq}
        session.send(reply(dict(event, unread=unread), frame.ref))
        await self._bus.publish(Delivery(
            frame=event, user_ids=tuple(p.user_id for p in participants), exclude_connection=session.id
        ))

