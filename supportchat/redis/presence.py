"""Presence in Redis: which connections (and on which node) each user has.

``{p}presence:U`` is a hash connection -> "node|expires_at" whose key expires
after the TTL unless a heartbeat refreshes it; ``{p}online`` is a zset of
users by expiry. Entries of a killed node lapse with the TTL.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from supportchat.redis.connection import RedisClient


class RedisPresenceStore:
    def __init__(self, clock: IReactorTime, redis: RedisClient, ttl: float, node_id: str, prefix: str = "sc:") -> None:
        self._clock = clock
        self._redis = redis
        self._ttl = ttl
        self._node = node_id
        self._p = prefix

    def touch(self, user_id: str, connection_id: str) -> "Deferred[None]":
        if not self._redis.connected:
            return succeed(None)  # best effort: presence repairs itself on the next heartbeat
        expires = self._clock.seconds() + self._ttl
        key = f"{self._p}presence:{user_id}"
        self._redis.execute("HSET", key, connection_id, f"{self._node}|{expires}").addErrback(lambda _: None)
        self._redis.execute("PEXPIRE", key, int(self._ttl * 1000)).addErrback(lambda _: None)
        d = self._redis.execute("ZADD", f"{self._p}online", expires, user_id)
        return d.addBoth(lambda _: None)

    def remove(self, user_id: str, connection_id: str) -> "Deferred[None]":
        if not self._redis.connected:
            return succeed(None)
        return self._redis.execute("HDEL", f"{self._p}presence:{user_id}", connection_id).addBoth(lambda _: None)

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
