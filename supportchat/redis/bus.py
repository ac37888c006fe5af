"""Cross-node delivery over Redis pub/sub, routed by presence.

A delivery goes to local sessions directly, to each other node where a
recipient is connected (``{p}node:<id>`` channel), and to every node for
role-wide deliveries (``{p}broadcast``). Pub/sub is lossy by design: clients
detect a seq gap (or reconnect) and repair it with ``sync``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.logger import Logger

from supportchat.bus.interfaces import Delivery, DeliveryCallback
from supportchat.bus.memory import LocalBus
from supportchat.redis.connection import RedisClient
from supportchat.redis.presence import RedisPresenceStore

log = Logger()


class RedisBus:
    def __init__(self, redis: RedisClient, presence: RedisPresenceStore, node_id: str, prefix: str = "sc:") -> None:
        self._redis = redis
        self._presence = presence
        self.node_id = node_id
        self._p = prefix
        self._local = LocalBus()
        self.published_remote = 0
        self.received_remote = 0

    @property
    def channels(self) -> list[str]:
        return [f"{self._p}node:{self.node_id}", f"{self._p}broadcast"]

    def on_message(self, channel: str, message: str) -> None:
        """From the subscriber connection."""
        try:
            data = json.loads(message)
        except ValueError:
            log.warn("ignoring a malformed bus message")
            return
        if data.get("origin") == self.node_id:
            return
        self.received_remote += 1
        self._local.publish(Delivery.from_json(data))

    def subscribe(self, callback: DeliveryCallback) -> Callable[[], None]:
        return self._local.subscribe(callback)

    def publish(self, delivery: Delivery) -> "Deferred[None]":
        self._local.publish(delivery)
        if delivery.local_only:
            return succeed(None)  # the APPEND script sent it to the other nodes
        return Deferred.fromCoroutine(self._route(delivery))

    async def _route(self, delivery: Delivery) -> None:
        if not self._redis.connected:
            return  # local only; other nodes' clients repair with sync
        payload = dict(delivery.to_json(), origin=self.node_id)
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        try:
            if delivery.roles:
                await self._redis.execute("PUBLISH", f"{self._p}broadcast", text)
                self.published_remote += 1
                return
            # All presence reads at once, then all PUBLISHes at once: two
            # round trips whatever the number of recipients.
            found = await gatherResults([self._presence.nodes_for(u) for u in delivery.user_ids],
                                        consumeErrors=True)
            nodes: set[str] = set().union(*found) if found else set()
            nodes.discard(self.node_id)
            sent = [self._redis.execute("PUBLISH", f"{self._p}node:{node}", text) for node in sorted(nodes)]
            await gatherResults(sent, consumeErrors=True)
            self.published_remote += len(sent)
        except Exception as e:
            cause = e.subFailure.value if isinstance(e, FirstError) else e
            log.warn("cross-node delivery skipped: {error}", error=str(cause))


def make_subscriber_hook(bus: RedisBus) -> Callable[[Any], Any]:
    """``on_connect`` for the subscriber connection: (re)subscribe."""

    def hook(proto: Any) -> Any:
        return proto.subscribe(bus.channels)

    return hook
