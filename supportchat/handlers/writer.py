"""The one path for a message: append it through the chat store, then
publish it to the conversation's participants.

Every producer writes through :class:`MessageWriter`: a customer's or an
agent's chat message, an agent joining, the workflow's lifecycle events,
the bot's replies. So one set of rules holds for all of them:

- the append is durable (and sequenced) before anyone is told, and the
  producer's own answer (an ack) can go out before the others hear of it;
- a duplicate (an idempotency key already recorded) is not published
  again, unless the producer asks to republish (the bot, finishing a
  decision that a crashed node may have stored but not delivered);
- the connection that caused the message can be left out (the sender has
  its ack);
- joining: ``join`` adds the sender as a participant in the same commit;
  when they already are one, the producer chooses to record the event
  anyway (``if_joined="record"``) or to write nothing (``"skip"``);
- metrics: every append is counted by kind and result (new or duplicate),
  and timed (``message_append_seconds``, ``message_publish_seconds``);
- a message with attachments is published with fresh signed links
  (``links``: ``supportchat.attachments.links.LinkSigner.decorate``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Literal

from twisted.internet.interfaces import IReactorTime

from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.metrics import Metrics
from supportchat.storage.interfaces import ConversationStore
from supportchat.storage.models import EVENT, AppendRequest, AppendResult, Conflict

IfJoined = Literal["record", "skip"]


class MessageWriter:
    """Append, then publish: the only component that does both."""

    def __init__(self, clock: IReactorTime, store: ConversationStore, bus: MessageBus, metrics: Metrics,
                 links: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self._clock = clock
        self._store = store
        self._bus = bus
        self._metrics = metrics
        self._links = links
        self._written_children: dict[tuple[str, bool], Any] = {}

    def _written(self, kind: str, duplicate: bool) -> Any:
        """The ``messages_written_total`` child for these labels, looked up once."""
        key = (kind, duplicate)
        child = self._written_children.get(key)
        if child is None:
            child = self._metrics.messages_written.labels(kind, "duplicate" if duplicate else "new")
            self._written_children[key] = child
        return child

    async def write(self, request: AppendRequest, exclude_connection: str | None = None,
                    if_joined: IfJoined = "record", republish: bool = False,
                    on_stored: Callable[[AppendResult], None] | None = None) -> AppendResult | None:
        """Append ``request`` and publish the stored message to every
        participant (but ``exclude_connection``). ``on_stored`` runs between
        the two (the sender's ack goes out before anyone else hears of the
        message). Returns the result, or None when a join found the sender
        already a participant and ``if_joined`` is ``"skip"``. Store errors
        propagate unchanged."""
        append, publish = self._metrics.hop_append, self._metrics.hop_publish
        started = append.now()
        try:
            result = await self._store.append(request)
        except Conflict:
            if not request.join:
                raise
            if if_joined == "skip":
                return None
            result = await self._store.append(replace(request, join=False))
        append.since(started)
        self._written(request.kind, result.duplicate).inc()
        if on_stored is not None:
            on_stored(result)
        if result.duplicate and not republish:
            return result
        started = publish.now()
        frame = result.message.to_wire()
        if self._links is not None and "attachments" in frame:
            frame = self._links(frame)
        await self._bus.publish(Delivery(
            frame=frame,
            user_ids=tuple(p.user_id for p in result.participants),
            exclude_connection=exclude_connection,
            local_only=result.fanned_out,
        ))
        publish.since(started)
        return result

    async def event(
        self, conversation_id: str, sender_id: str, sender_role: str, name: str, data: dict[str, Any], body: str,
        join: bool = False, require_participant: bool = True, if_joined: IfJoined = "record",
        key: str | None = None,
    ) -> AppendResult | None:
        """A lifecycle event (``kind`` event, ``data.name``), written like
        any message; ``key`` makes it idempotent per sender."""
        return await self.write(AppendRequest(
            conversation_id=conversation_id, sender_id=sender_id, sender_role=sender_role, kind=EVENT, body=body,
            ts=self._clock.seconds(), data=dict(data, name=name), join=join,
            require_participant=require_participant, client_msg_id=key,
        ), if_joined=if_joined)
