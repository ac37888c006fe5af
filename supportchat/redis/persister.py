"""The persister: flushes the Redis stream to SQL in batches.

At-least-once and idempotent: entries are read through a consumer group,
inserted only if their msg_id is new, and acknowledged (XACK) only after the
SQL commit. Entries left pending by a dead persister are claimed after an
idle time (XAUTOCLAIM); an entry that keeps failing goes to a dead-letter
stream after ``max_deliveries`` attempts. The stream is trimmed by MINID
below the oldest entry any consumer group still needs.
"""

from __future__ import annotations


from twisted.internet.defer import FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.metrics import Metrics
from supportchat.redis.codec import decode_message
from supportchat.redis.connection import RedisClient, RedisUnavailable
from supportchat.redis.consumer import Entries, StreamConsumer, ensure_group, parse_entries
from supportchat.redis.scripts import SEED
from supportchat.redis.store import KEY_TTL
from supportchat.redis.replicas import ReplicaWait, ReplicasBehind
from supportchat.storage.database import Database, RowSkipped
from supportchat.storage.models import Message
from supportchat.storage.persist import PersistResult, persist_batch_txn

log = Logger()

GROUP = "persisters"

# XACK the flushed entries and trim each conversation's recent set up to
# the highest seq now in SQL. KEYS: the stream, then the recent sets;
# ARGV: the group, the number of entry ids, the ids, then one top seq per
# recent set. Returns the number acknowledged.
ACK_AND_TRIM = """
local n = tonumber(ARGV[2])
local acked = 0
for i = 3, 2 + n, 4000 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(2 + n, i + 3999)))
end
for k = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[1 + n + k])
end
return acked
"""


class _NotAnOutage(Exception):
    """Persisting failed for what the batch holds, not for the database."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _first_error(failure: Failure) -> Failure:
    """The failure of the first command that failed, not gatherResults' wrapper."""
    error = failure.value
    if isinstance(error, FirstError):
        sub: Failure = error.subFailure
        return sub
    return failure


async def stream_backlog(redis: RedisClient, stream: str, group: str) -> int:
    """Entries the group has not acknowledged (not yet delivered + pending)."""
    try:
        groups = await redis.execute("XINFO", "GROUPS", stream)
    except RedisUnavailable:
        raise
    except Exception:
        return 0  # no stream yet
    for info in groups or []:
        fields = {str(info[i]): info[i + 1] for i in range(0, len(info) - 1, 2)}
        if fields.get("name") == group:
            lag = fields.get("lag")
            pending = int(fields.get("pending") or 0)
            if lag is None:  # Redis cannot tell (after deletions): count it
                length = int(await redis.execute("XLEN", stream))
                return max(length, pending)
            return int(lag) + pending
    return int(await redis.execute("XLEN", stream))


class Persister(StreamConsumer):
    """One persister consumer; several may run against one stream."""

    what = "Persister"
    acks_all = True  # every entry is stored, or dead-lettered, and acknowledged
    read_ahead = True

    def __init__(self, clock: IReactorTime, redis: RedisClient, db: Database, metrics: Metrics, consumer: str,
                 prefix: str = "sc:", batch: int = 2000, block_ms: int = 500, claim_idle_ms: int = 15000,
                 max_deliveries: int = 5, idempotency_window: float = 86400.0,
                 keep_for_others: float = 3600.0, replica_wait: ReplicaWait | None = None) -> None:
        super().__init__(clock, redis, consumer, f"{prefix}stream", GROUP, batch, block_ms, claim_idle_ms,
                         max_deliveries, claim_every=10)
        self._db = db
        self._metrics = metrics
        self._p = prefix
        self.dead_stream = f"{prefix}dead"
        self._window = idempotency_window
        self.flushed = 0
        self.batches = 0
        # Other consumer groups (bots) are waited for this long at most.
        self._keep_for_others = keep_for_others
        self._behind: set[str] = set()
        # With [redis] wait_replicas: only entries the replicas have reach SQL.
        self._replica_wait = replica_wait

    async def handle(self, entries: Entries, retry: bool) -> None:
        await self._flush(entries, retry)

    async def after_claim(self) -> None:
        behind = await trim_stream(self._redis, self.stream, self._keep_for_others)
        # The bots' stream: what they have read (or what is older than
        # keep_for_others) goes; nothing while no bot has made its group.
        bots = f"{self._p}bot"
        if int(await self._redis.execute("EXISTS", bots)):
            behind |= await trim_stream(self._redis, bots, self._keep_for_others)
        for group in sorted(behind - self._behind):
            log.warn("consumer group {group} is over {seconds:.0f} s behind the stream (are its nodes running?); "
                     "older entries are trimmed without it", group=group, seconds=self._keep_for_others)
        for group in sorted(self._behind - behind):
            log.info("consumer group {group} has caught up with the stream", group=group)
        self._behind = behind

    async def _flush(self, entries: Entries, retry: bool = True) -> None:
        decoded: list[tuple[str, Message]] = []
        bad: list[str] = []
        for entry_id, fields in entries:
            try:
                decoded.append((entry_id, decode_message(fields["m"])))
            except Exception:
                bad.append(entry_id)
        if bad:
            await self._dead_letter(bad, "undecodable")
        # Entries read for the first time (retry false) were delivered once.
        over = await self.over_delivered([e for e, _ in decoded]) if retry else set()
        if over:
            await self._dead_letter(sorted(over), "too many attempts")
            decoded = [(e, m) for e, m in decoded if e not in over]
        if not decoded:
            return
        ids = [e for e, _ in decoded]
        keep = [m for _, m in decoded]
        await self._replicated()
        result, unstorable = await self._commit(keep)
        if result.refused:
            refused_ids = [e for e, m in decoded if m.msg_id in result.refused]
            await self._dead_letter(refused_ids, "unknown conversation")
        if unstorable:
            await self._dead_letter([e for e, m in decoded if m.msg_id in unstorable], "unstorable")
        for conv, top in result.resequenced.items():
            # Redis lost writes and handed out seqs SQL already had: raise its counter.
            log.warn("moved messages to the end of a conversation after a seq clash (up to {top})", top=top)
        tops: dict[str, int] = {}
        for m in keep:
            tops[m.conversation_id] = max(tops.get(m.conversation_id, 0), m.seq)
        # One round trip for the lot: the commands are sent at once (one
        # connection, replies in order) and awaited together; the counters
        # are raised before the entries are acknowledged. XACK and every
        # recent-set trim are one script (one command, not one per
        # conversation).
        sent = [self._redis.eval(SEED, [], [self._p, conv, top, KEY_TTL])
                for conv, top in result.resequenced.items()]
        sent.append(self._redis.eval(
            ACK_AND_TRIM, [self.stream, *(f"{self._p}recent:{conv}" for conv in tops)],
            [GROUP, len(ids), *ids, *tops.values()]))
        await gatherResults(sent, consumeErrors=True).addErrback(_first_error)
        inserted = result.inserted
        self.flushed += inserted
        self.batches += 1
        self._metrics.persisted.inc(inserted)
        self._metrics.persister_batches.inc()

    async def _replicated(self) -> None:
        """With ``wait_replicas``: wait until the replicas have everything
        the primary has done so far, these entries included (a fence write
        and ``WAIT`` on this connection), retrying in place while they are
        behind. An entry the primary accepted but did not replicate was
        never acknowledged (the gateway waits for the same replicas); if the
        primary dies now, a promoted replica does not have it and its
        sender's retry is stored instead. Flushing it to SQL first would
        store the unacknowledged copy and make the acknowledged retry a
        duplicate of it."""
        if self._replica_wait is None:
            return
        while True:
            try:
                await self._replica_wait.wait(self._replica_wait.connection(), fence=True)
                return
            except ReplicasBehind as e:
                if self._stopping:
                    raise
                await self._pause(e.retry_after or 1.0)

    async def _commit(self, messages: list[Message]) -> tuple[PersistResult, set[str]]:
        """Commit the batch, retrying database outages in place (re-reading
        the entries would count as redeliveries and dead-letter acknowledged
        messages during a database outage). A failure that is not an outage
        (a value the database refuses) is isolated: the messages are
        committed one by one and the culprits returned (by msg_id) for the
        dead-letter stream, so one message never stalls the others."""
        try:
            return await self._commit_retrying(messages), set()
        except _NotAnOutage as e:
            log.warn("persisting a batch of {n} failed ({error}); persisting its messages one by one",
                     n=len(messages), error=e.name)
        inserted, refused, resequenced, unstorable = 0, [], {}, set()
        for message in messages:
            try:
                one = await self._commit_retrying([message])
            except _NotAnOutage:
                unstorable.add(message.msg_id)
                continue
            inserted += one.inserted
            refused += one.refused
            resequenced.update(one.resequenced)
        return PersistResult(inserted, refused, resequenced), unstorable

    async def _commit_retrying(self, messages: list[Message]) -> PersistResult:
        delay = 0.2
        while True:
            try:
                return await self._db.run_interaction("persist_batch", persist_batch_txn, messages, self._window)
            except Exception as e:
                if self._stopping:
                    raise
                # Another writer took a seq under us (RowSkipped): the
                # transaction rolled back and is retried in place, like an
                # outage, never dead-lettered as unstorable.
                if not self._db.engine.is_outage(e) and not isinstance(e, RowSkipped):
                    raise _NotAnOutage(type(e).__name__) from None
                log.failure("persisting a batch of {n} failed; retrying", n=len(messages))
                await self._pause(delay)
                delay = min(delay * 2, 5.0)

    async def _dead_letter(self, ids: list[str], reason: str) -> None:
        for entry_id in ids:
            rows = await self._redis.execute("XRANGE", self.stream, entry_id, entry_id)
            for _, fields in parse_entries(rows):
                await self._redis.execute("XADD", self.dead_stream, "*", "id", entry_id, "reason", reason, *sum(fields.items(), ()))
            await self._redis.execute("XACK", self.stream, GROUP, entry_id)
        self._metrics.dead_letters.inc(len(ids))
        log.warn("{n} stream entries moved to the dead-letter stream: {reason}", n=len(ids), reason=reason)


async def trim_stream(redis: RedisClient, stream: str, keep_for_others: float = 3600.0) -> set[str]:
    """XTRIM MINID below what every consumer group still needs. The
    persisters' group is always waited for (it makes messages durable);
    any other group (the bots) only for ``keep_for_others`` seconds of
    stream time (0: always): a group whose nodes are all gone must not make
    the stream, and Redis's memory, grow without end. Returns the groups
    that were left behind this time."""
    groups = await redis.execute("XINFO", "GROUPS", stream)
    floor: str | None = None
    bound: str | None = None
    if keep_for_others > 0:
        newest = await redis.execute("XREVRANGE", stream, "+", "-", "COUNT", 1)
        if newest:
            ms, _ = _id_key(str(newest[0][0]))
            bound = f"{max(0, ms - int(keep_for_others * 1000))}-0"
    behind: set[str] = set()
    for info in groups or []:
        fields = {str(info[i]): info[i + 1] for i in range(0, len(info) - 1, 2)}
        name = str(fields.get("name"))
        need = str(fields.get("last-delivered-id"))
        if int(fields.get("pending") or 0) > 0:
            summary = await redis.execute("XPENDING", stream, name)
            if summary and summary[1]:
                need = str(summary[1])
        if name != GROUP and bound is not None and _id_key(need) < _id_key(bound):
            behind.add(name)
            need = bound
        if floor is None or _id_key(need) < _id_key(floor):
            floor = need
    if floor is not None and floor != "0-0":
        await redis.execute("XTRIM", stream, "MINID", floor)
    return behind


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["GROUP", "Persister", "ensure_group", "parse_entries", "stream_backlog", "trim_stream"]
