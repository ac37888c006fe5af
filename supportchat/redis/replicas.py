"""Acknowledge only what a replica has: Redis ``WAIT`` before the ack.

Replication is asynchronous, so a message the primary has accepted can be
lost when a replica is promoted in its place. With ``[redis] wait_replicas``
above 0, a gateway confirms each append with ``WAIT <replicas> <timeout>``
before it acknowledges the message.

``WAIT`` covers the writes made on the connection it is sent on, so it goes
on the same connection as the append, and only while that connection is the
one the append used (a reconnect in between may have reached another
server: the append's fate is then unknown, and the caller treats Redis as
unreachable). Appends waiting at the same time share one ``WAIT``: it is
sent after their writes, so it covers them all. A duplicate's original may
have been written by another connection, so a round that confirms one is
preceded by a small write of its own (a fence): ``WAIT`` then covers
everything the primary had done before it.

Replicas that stop confirming can also mean that this primary was replaced
without our connection breaking (a network partition): with Sentinel, the
client then asks the sentinels again and follows the new primary.

``WAIT`` blocks the connection for up to its timeout. After a round that
times out, appends are refused at once (``unavailable``, ``retry_after``)
for ``retry_after`` seconds instead of each blocking the connection again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.redis.connection import RedisClient, RedisUnavailable
from supportchat.storage.models import StoreError

log = Logger()


class ReplicasBehind(StoreError):
    """Too few replicas confirmed the write in time; retry later (the retry
    with the same ``client_msg_id`` is idempotent)."""

    code = "unavailable"


class ReplicaWait:
    """Coalesced ``WAIT`` rounds on a RedisClient's command connection."""

    def __init__(self, clock: IReactorTime, redis: RedisClient, replicas: int, timeout: float,
                 retry_after: float, fence_key: str) -> None:
        self._clock = clock
        self._redis = redis
        self.replicas = replicas
        self._timeout_ms = max(1, int(timeout * 1000))
        self._retry_after = retry_after
        self._fence_key = fence_key
        self._queue: list[tuple[Any, Deferred[None]]] = []
        self._fence = False
        self._busy = False
        self._closed_until = 0.0
        self.timeouts = 0

    def _behind(self, retry_in: float) -> ReplicasBehind:
        error = ReplicasBehind(f"the message is not yet safe on {self.replicas} replica(s); "
                               f"retry in {retry_in:g} s")
        error.retry_after = retry_in
        return error

    def check(self) -> None:
        """Refuse at once while the replicas were found behind moments ago."""
        left = self._closed_until - self._clock.seconds()
        if left > 0:
            raise self._behind(round(left, 2))

    @property
    def closed(self) -> bool:
        return self._clock.seconds() < self._closed_until

    def connection(self) -> Any:
        """The connection an append is about to use (raises RedisUnavailable)."""
        return self._redis.protocol()

    def wait(self, connection: Any, fence: bool) -> "Deferred[None]":
        """Fires once ``replicas`` replicas have every write made on
        ``connection`` so far (and, with ``fence``, everything the primary
        did so far); fails with ReplicasBehind or RedisUnavailable."""
        d: Deferred[None] = Deferred()
        self._queue.append((connection, d))
        self._fence = self._fence or fence
        if not self._busy:
            self._round()
        return d

    def _round(self) -> None:
        batch, self._queue = self._queue, []
        fence, self._fence = self._fence, False
        self._busy = True
        Deferred.fromCoroutine(self._run(batch, fence))

    async def _run(self, batch: list[tuple[Any, Deferred[None]]], fence: bool) -> None:
        try:
            current = self._redis.protocol()
        except RedisUnavailable:
            current = None
        mine = [d for conn, d in batch if conn is current and current is not None]
        moved = [d for conn, d in batch if not (conn is current and current is not None)]
        error: Exception | None = None
        if mine:
            try:
                # Sent back to back on one connection: the fence, then WAIT.
                sends = ([self._redis.execute("INCR", self._fence_key)] if fence else [])
                sends.append(self._redis.execute("WAIT", self.replicas, self._timeout_ms))
                replies = await gatherResults(sends, consumeErrors=True)
                acked = int(replies[-1])
                if acked < self.replicas:
                    self.timeouts += 1
                    self._closed_until = self._clock.seconds() + self._retry_after
                    log.warn("only {acked} of {replicas} replicas confirmed writes within {ms} ms; "
                             "refusing messages for {retry} s", acked=acked, replicas=self.replicas,
                             ms=self._timeout_ms, retry=self._retry_after)
                    error = self._behind(self._retry_after)
                    # Maybe this is no longer the primary (a partition): ask the sentinels.
                    self._redis.recheck_primary()
            except FirstError as e:
                cause = e.subFailure.value
                error = cause if isinstance(cause, RedisUnavailable) else RedisUnavailable(str(cause))
            except Exception as e:
                error = e if isinstance(e, RedisUnavailable) else RedisUnavailable(str(e))
        self._busy = False
        for d in moved:
            d.errback(RedisUnavailable("the Redis connection changed before the write was confirmed"))
        for d in mine:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
        if self._queue and not self._busy:
            self._round()
