"""Session lifecycle: ``hello`` on open, presence while connected, clean
removal on close, and the bus's deliveries pushed to this node's sessions."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config import ChatConfig
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.handlers.hooks import WorkflowHooks
from supportchat.metrics import Metrics
from supportchat.storage.interfaces import ChatStore, PresenceStore
from supportchat.wire.frames import error_frame

log = Logger()

# Unassigned conversations listed in a staff member's ``hello``.
QUEUE_LIMIT = 50


class Sessions:
    """Opens and closes sessions; delivers the bus's frames to them."""

    def __init__(
        self, clock: IReactorTime, store: ChatStore, bus: MessageBus, presence: PresenceStore,
        registry: ConnectionRegistry, metrics: Metrics, background: BackgroundTasks, config: ChatConfig,
        heartbeat: int, hooks: WorkflowHooks,
    ) -> None:
        self._clock = clock
        self._store = store
        self._presence = presence
        self._registry = registry
        self._metrics = metrics
        self._background = background
        self._config = config
        self._heartbeat = heartbeat
        self._hooks = hooks
        self._last_touch: dict[str, float] = {}
        self._unsubscribe = bus.subscribe(self._on_delivery)

    def stop(self) -> None:
        self._unsubscribe()
        self._hooks.stop()

    def _on_delivery(self, delivery: Delivery) -> None:
        hop = self._metrics.hop_deliver
        started = hop.now()
        n = self._registry.deliver(delivery)
        if n:
            hop.since(started)
        self._hooks.observe(delivery)
        if n and delivery.frame.get("type") == "message":
            self._metrics.messages_delivered.inc(n)

    async def open(self, session: ClientSession) -> None:
        """Register the session and send ``hello`` with the user's state
        (or refuse: a disabled account gets 1008, a store failure 1011)."""
        self._registry.add(session)
        self.touch(session, force=True)
        try:
            if not await self._hooks.admit(session):
                session.ready = True
                session.send(error_frame("account_disabled", "this account is disabled or the token was revoked"))
                session.close(1008, "account disabled")
                return
            hello = await self._hello(session)
        except Exception:
            log.failure("could not build hello for a session")
            session.ready = True
            session.send(error_frame("unavailable", "the server cannot load your conversations; reconnect shortly"))
            session.close(1011, "unavailable")
            return
        session.open_with(hello)

    async def _hello(self, session: ClientSession) -> dict[str, Any]:
        states = await self._store.get_states(session.user_id)
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
            queue = await self._store.list_unassigned(QUEUE_LIMIT)
            hello["queue"] = [c.to_wire() for c in queue]
        hello.update(await self._hooks.hello(session, [s.conversation_id for s in states]))
        return hello

    def close(self, session: ClientSession) -> None:
        session.closed = True
        self._registry.remove(session)
        self._hooks.session_closed(session)
        self._last_touch.pop(session.id, None)
        self._background.run("presence_remove", self._presence.remove, session.user_id, session.id)

    def touch(self, session: ClientSession, force: bool = False) -> None:
        """Any sign of life refreshes presence, at most three times per TTL
        (enough never to lapse)."""
        now = self._clock.seconds()
        last = self._last_touch.get(session.id)
        if force or last is None or now - last >= self._config.presence_ttl / 3:
            self._last_touch[session.id] = now
            self._background.run("presence_touch", self._presence.touch, session.user_id, session.id)
