"""The loop every consumer group on the message stream runs (persisters,
bots): own pending entries first (a failed round, or a restart under the
same name), entries other consumers left idle too long (XAUTOCLAIM), then
new entries with a blocking read. Subclasses say what to do with a batch."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from supportchat.redis.connection import RedisClient, RedisUnavailable

log = Logger()

Entries = list[tuple[str, dict[str, str]]]


def parse_entries(reply: Any) -> Entries:
    """XREADGROUP / XAUTOCLAIM entry lists -> [(id, fields)]."""
    out = []
    for entry in reply or []:
        if not entry or entry[1] is None:
            continue
        entry_id, flat = entry[0], entry[1]
        out.append((str(entry_id), {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}))
    return out


async def ensure_group(redis: RedisClient, stream: str, group: str) -> None:
    try:
        await redis.execute("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    except RedisUnavailable:
        raise
    except Exception as e:
        if "BUSYGROUP" not in str(e):
            raise


class StreamConsumer(Service):
    """One consumer of one group; several may run against one stream."""

    what = "stream consumer"
    # True when ``handle`` acknowledges (or dead-letters) every entry it is
    # given unless it raises: then a round that went well leaves nothing
    # pending, and the next round skips reading this consumer's pending
    # entries (and re-creating the group): one Redis round trip less each.
    acks_all = False
    # True: while a full batch is handled, the next one is read already
    # (without blocking), so reading and parsing it overlaps the handling
    # (the persister's SQL commit, on a pool thread).
    read_ahead = False

    def __init__(self, clock: IReactorTime, redis: RedisClient, consumer: str, stream: str, group: str,
                 batch: int, block_ms: int, claim_idle_ms: int, max_deliveries: int, claim_every: int) -> None:
        self._clock = clock
        self._redis = redis
        self.consumer = consumer
        self.stream = stream
        self.group = group
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._max_deliveries = max_deliveries
        self._claim_every = claim_every
        self._loop: Deferred[None] | None = None
        self._stopping = False
        # Something may be pending for this consumer (a restart under the
        # same name, a failed round, a handler that leaves entries).
        self._unsure = True
        self._ahead: Entries = []
        self._grouped = False
        # Seconds to wait after a batch that was not full before reading
        # again ([redis] stream_linger): at a steady rate the next read then
        # takes what arrived meanwhile, so the persister commits (and fsyncs)
        # a few larger batches a second instead of one per handful of
        # entries. Costs at most this much more lag; 0 reads at once.
        self.linger = 0.0

    async def handle(self, entries: Entries, retry: bool) -> None:
        """Process a batch and XACK what is done; ``retry`` is true for
        entries delivered before (own pending, claimed)."""
        raise NotImplementedError

    async def after_claim(self) -> None:
        """Periodic upkeep after the claim step (e.g. trimming)."""

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        log.info("{what} started as consumer {consumer}", what=self.what, consumer=self.consumer)
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.failure("{what} stopped", f, what=self.what))

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        self._stopping = True
        return self._loop

    async def _pause(self, seconds: float) -> None:
        await deferLater(self._clock, seconds, lambda: None)

    async def _run(self) -> None:
        rounds = 0
        while not self._stopping:
            try:
                if not self._redis.connected:
                    self._unsure, self._ahead = True, []
                    await self._pause(0.2)
                    continue
                if self._unsure:
                    await ensure_group(self._redis, self.stream, self.group)
                    if not self._grouped:
                        self._grouped = True
                        log.info("{what} {consumer} reads {stream} as group {group}", what=self.what,
                                 consumer=self.consumer, stream=self.stream, group=self.group)
                    pending = await self._read("0", block=False)
                    if pending:
                        await self.handle(pending, retry=True)
                        continue
                    self._unsure = False
                rounds += 1
                if rounds % self._claim_every == 1:
                    self._unsure = True  # claimed entries may stay pending
                    await self._claim()
                    await self.after_claim()
                    self._unsure = not self.acks_all
                fresh, self._ahead = self._ahead or await self._read(">", block=True), []
                if fresh:
                    self._unsure = True
                    ahead = None
                    if self.read_ahead and len(fresh) >= self._batch:
                        ahead = Deferred.fromCoroutine(self._read(">", block=False))
                    try:
                        await self.handle(fresh, retry=False)
                    except BaseException:
                        if ahead is not None:  # what it reads is re-read as pending
                            ahead.addErrback(lambda _: None)
                        raise
                    if ahead is not None:
                        self._ahead = await ahead
                    self._unsure = not self.acks_all
                    if self.linger > 0 and not self._ahead and len(fresh) < self._batch and not self._stopping:
                        await self._pause(self.linger)
            except RedisUnavailable:
                self._unsure, self._ahead = True, []
                await self._pause(0.2)
            except Exception:
                self._unsure, self._ahead = True, []
                log.failure("{what} round failed; retrying", what=self.what)
                await self._pause(1.0)

    async def _read(self, start: str, block: bool) -> Entries:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self._batch]
        if block:
            args += ["BLOCK", self._block_ms]
        reply = await self._redis.execute(*args, "STREAMS", self.stream, start)
        if not reply:
            return []
        return parse_entries(reply[0][1])

    async def _claim(self) -> None:
        reply = await self._redis.execute(
            "XAUTOCLAIM", self.stream, self.group, self.consumer, self._claim_idle_ms, "0-0", "COUNT", self._batch
        )
        claimed = parse_entries(reply[1]) if reply else []
        if claimed:
            log.info("{what} claimed {n} entries left pending by another consumer", what=self.what, n=len(claimed))
            await self.handle(claimed, retry=True)

    async def over_delivered(self, ids: list[str]) -> set[str]:
        """The entries among ``ids`` delivered more than max_deliveries times."""
        if not ids:
            return set()
        reply = await self._redis.execute("XPENDING", self.stream, self.group, "-", "+", len(ids) + 100)
        wanted = set(ids)
        return {str(r[0]) for r in reply or [] if int(r[3]) > self._max_deliveries and str(r[0]) in wanted}
