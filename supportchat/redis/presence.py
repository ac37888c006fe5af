"""Presence in Redis: which connections (and on which node) each user has.

``{p}presence:U`` is a hash connection -> "node|expires_at" whose key expires
after the TTL unless a heartbeat refreshes it; ``{p}online`` is a zset of
users by expiry. Entries of a killed node lapse with the TTL.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from supportchat.redis.connection import RedisClient
from supportchat.redis.scripts import PRESENCE

# Presence writes sent in one script at most (a reconnect storm queues more).
BATCH_MAX = 2000


class RedisPresenceStore:
    """Writes (touch, remove) are coalesced: the first is sent at once; the
    ones made while it is in flight wait and then go together, in order, as
    one PRESENCE script. Ten thousand connections refresh their presence
    every ``ttl / 3`` seconds; that is one Redis command per round trip, not
    three per connection."""

    def __init__(self, clock: IReactorTime, redis: RedisClient, ttl: float, node_id: str, prefix: str = "sc:") -> None:
        self._clock = clock
        self._redis = redis
        self._ttl = ttl
        self._node = node_id
        self._p = prefix
        self._queued: list[tuple[str, str, str, str]] = []
        self._waiters: list[Deferred[None]] = []
        self._in_flight = False
        self.batches = 0

    def touch(self, user_id: str, connection_id: str) -> "Deferred[None]":
        if not self._redis.connected:
            return succeed(None)  # best effort: presence repairs itself on the next heartbeat
        expires = self._clock.seconds() + self._ttl
        return self._write("t", user_id, connection_id, f"{self._node}|{expires}")

    def remove(self, user_id: str, connection_id: str) -> "Deferred[None]":
        if not self._redis.connected:
            return succeed(None)
        return self._write("r", user_id, connection_id, "")

    def _write(self, op: str, user_id: str, connection_id: str, value: str) -> "Deferred[None]":
        """Queue one write; the Deferred fires (with None, also when Redis
        failed: presence is best effort) once its batch has been answered."""
        d: Deferred[None] = Deferred()
        self._queued.append((op, user_id, connection_id, value))
        self._waiters.append(d)
        if not self._in_flight:
            self._send()
        return d

    def _send(self) -> None:
        ops, waiters = self._queued[:BATCH_MAX], self._waiters[:BATCH_MAX]
        del self._queued[:BATCH_MAX], self._waiters[:BATCH_MAX]
        args: list[object] = [self._p, int(self._ttl * 1000)]
        for op in ops:
            args.extend(op)
        self._in_flight = True
        self.batches += 1

        def done(_: object) -> None:
            self._in_flight = False
            for waiter in waiters:
                waiter.callback(None)
            if self._queued and not self._in_flight:
                self._send()

        self._redis.eval(PRESENCE, [], args).addBoth(done)

    async def _entries(self, user_id: str) -> dict[str, str]:
        flat = await self._redis.execute("HGETALL", f"{self._p}presence:{user_id}")
        now = self._clock.seconds()
        live: dict[str, str] = {}
        for i in range(0, len(flat or []) - 1, 2):
            node, _, expires = str(flat[i + 1]).partition("|")
            if float(expires or 0) > now:
                live[str(flat[i])] = node
        return live

    def nodes_for(self, user_id: str) -> "Deferred[set[str]]":
        async def run() -> set[str]:
            return set((await self._entries(user_id)).values())

        return Deferred.fromCoroutine(run())

    def is_online(self, user_id: str) -> "Deferred[bool]":
        async def run() -> bool:
            return bool(await self._entries(user_id))

        return Deferred.fromCoroutine(run())

    def online_users(self) -> "Deferred[list[str]]":
        async def run() -> list[str]:
            now = self._clock.seconds()
            await self._redis.execute("ZREMRANGEBYSCORE", f"{self._p}online", "-inf", now)
            users = await self._redis.execute("ZRANGEBYSCORE", f"{self._p}online", f"({now}", "+inf")
            live = []
            for user in sorted(str(u) for u in users or []):
                if await self._entries(user):
                    live.append(user)
            return live

        return Deferred.fromCoroutine(run())
