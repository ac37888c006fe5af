"""Per-node upkeep in Redis mode: heartbeat in the node registry, the
persister backlog (metric, backpressure with hysteresis) and readiness."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.metrics import Metrics
from supportchat.redis.connection import RedisClient, RedisUnavailable
from supportchat.redis.persister import GROUP, stream_backlog
from supportchat.redis.store import RedisChatStore

log = Logger()


class ClusterMonitor:
    """Called every ``monitor_interval`` seconds (a TimerService)."""

    def __init__(self, clock: IReactorTime, redis: RedisClient, metrics: Metrics, node_id: str, roles: list[str],
                 prefix: str, node_ttl: float, high: int, low: int, store: RedisChatStore | None = None) -> None:
        self._clock = clock
        self._redis = redis
        self._metrics = metrics
        self.node_id = node_id
        self._roles = roles
        self._p = prefix
        self._ttl = node_ttl
        self._high = high
        self._low = low
        self._store = store
        self.backlog: int | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        self.started = clock.seconds()
        self._wait_timeouts = 0

    async def tick(self) -> None:
        self._metrics.degraded.set(1 if (self._store is not None and self._store.degraded) else 0)
        if self._store is not None:
            self._store.maybe_recover()
            if self._store.replicas is not None:
                seen = self._store.replicas.timeouts
                self._metrics.replica_wait_timeouts.inc(seen - self._wait_timeouts)
                self._wait_timeouts = seen
        if not self._redis.connected:
            return
        try:
            now = self._clock.seconds()
            info = {"roles": self._roles, "seen": now, "started": self.started}
            await self._redis.execute("HSET", f"{self._p}nodes", self.node_id, json.dumps(info))
            raw = await self._redis.execute("HGETALL", f"{self._p}nodes")
            nodes: dict[str, dict[str, Any]] = {}
            gone = []
            for i in range(0, len(raw or []) - 1, 2):
                entry = json.loads(raw[i + 1])
                if now - float(entry.get("seen", 0)) <= self._ttl:
                    nodes[str(raw[i])] = entry
                elif now - float(entry.get("seen", 0)) > 10 * self._ttl:
                    gone.append(str(raw[i]))
            if gone:
                await self._redis.execute("HDEL", f"{self._p}nodes", *gone)
            self.nodes = nodes
            self._metrics.nodes_alive.set(len(nodes))
            self.backlog = await stream_backlog(self._redis, f"{self._p}stream", GROUP)
            self._metrics.stream_backlog.set(self.backlog)
            self._apply_backpressure(self.backlog)
        except RedisUnavailable:
            pass

    def _apply_backpressure(self, backlog: int) -> None:
        if self._store is None:
            return
        if not self._store.overloaded and backlog > self._high:
            self._store.overloaded = True
            log.warn("Backpressure on: {backlog} stream entries not yet in SQL", backlog=backlog)
        elif self._store.overloaded and backlog < self._low:
            self._store.overloaded = False
            log.info("Backpressure off: backlog down to {backlog}", backlog=backlog)
        self._metrics.overloaded.set(1 if self._store.overloaded else 0)

    def readiness(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "redis": "ok" if self._redis.connected else "unreachable",
            "degraded": bool(self._store is not None and self._store.degraded),
            "backpressure": bool(self._store is not None and self._store.overloaded),
            "stream_backlog": self.backlog,
            "nodes": sorted(self.nodes),
        }
