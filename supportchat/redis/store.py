"""The chat store in Redis mode.

Writes: every message goes through one Lua script (idempotency, seq, stream
append, recent set, session state) and is acknowledged once Redis has it;
persisters flush the stream to SQL. Conversations and participants are
written to SQL directly (rare, and authorization must survive Redis).

Reads merge Redis (not yet flushed) and SQL (flushed), reading Redis first so
a concurrent flush-and-trim cannot hide a message from both.

Degraded mode: when Redis is unreachable, appends commit straight to SQL with
the same idempotency and a seq above everything this node has seen, and the
outcomes are written back to Redis (counters raised, idempotency keys
stored) before Redis is used again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.redis.codec import decode_message, encode_message, frame_tail, message_fields, split_message_json
from supportchat.redis.connection import RedisClient, RedisUnavailable, is_unavailable
from supportchat.redis.replicas import ReplicasBehind, ReplicaWait
from supportchat.redis.scripts import APPEND, MARK_READ, REMEMBER, SEED
from supportchat.storage.models import (
    AppendRequest,
    AppendResult,
    Conflict,
    Conversation,
    Message,
    NotFound,
    Participant,
    SessionState,
    StoreError,
    new_id,
)
from supportchat.storage.sql import SqlConversationStore

log = Logger()

KEY_TTL = 30 * 86400
HINTS_MAX = 100_000
RECENT_ACKS_MAX = 50_000


class Overloaded(StoreError):
    """Persisters are too far behind; the client should retry later."""

    code = "unavailable"


def _pairs(flat: list[Any]) -> list[Participant]:
    return [Participant(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


class RedisChatStore:
    """ConversationStore + SessionStateStore over Redis with SQL behind it."""

    def __init__(self, clock: IReactorTime, redis: RedisClient, sql: SqlConversationStore, prefix: str = "sc:",
                 retry_after: float = 2.0, wait_replicas: int = 0, wait_timeout: float = 0.5,
                 node_id: str = "", bot_keep: float = 3600.0) -> None:
        self.retry_after = retry_after
        # Once bots run: what they can answer also goes to their stream
        # ({p}bot), kept this many seconds at most (0: no limit).
        self._bot_keep = repr(float(bot_keep))
        # Fan-out with the append (one round trip per message): the script
        # publishes the delivery to the other nodes. Not with wait_replicas
        # (nobody may hear of a message before the replicas confirm it).
        self._fanout_origin = node_id if wait_replicas <= 0 else ""
        # [redis] wait_replicas: acknowledge only what replicas have (WAIT).
        self.replicas: ReplicaWait | None = (
            ReplicaWait(clock, redis, wait_replicas, wait_timeout, retry_after, f"{prefix}wait-fence")
            if wait_replicas > 0 else None)
        # Appends this node could not confirm on the replicas (never published).
        self._unconfirmed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._clock = clock
        self._redis = redis
        self._sql = sql
        self.prefix = prefix
        # Highest seq seen per conversation (acks and deliveries).
        self._hints: OrderedDict[str, int] = OrderedDict()
        # Outcomes committed to SQL while Redis was down, to write back.
        self._degraded: list[tuple[AppendRequest, Message]] = []
        self._recent_acks: OrderedDict[tuple[str, str], Message] = OrderedDict()
        self._recovering: Deferred[None] | None = None
        self.degraded = False
        self.overloaded = False
        self.degraded_appends = 0
        redis.on_state(self._redis_state)

    # -- state -------------------------------------------------------------
    def _redis_state(self, up: bool) -> None:
        if not up:
            if not self.degraded:
                log.warn("Redis unreachable: committing messages straight to SQL (degraded mode)")
            self.degraded = True
        else:
            self.maybe_recover()

    def maybe_recover(self) -> None:
        """Start writing back and using Redis again, if degraded and Redis is
        connected (called on reconnect and by the cluster monitor's tick)."""
        if self.degraded and self._recovering is None and self._redis.connected:
            d = Deferred.fromCoroutine(self._recover())
            if not d.called:  # it may finish at once; then nothing is in flight
                self._recovering = d

    async def _recover(self) -> None:
        """Write back what was committed while Redis was down, then use Redis again."""
        try:
            while self._degraded:
                batch, self._degraded = self._degraded[:200], self._degraded[200:]
                floors: dict[str, int] = {}
                args: list[Any] = [self.prefix, 86400]
                for req, msg in batch:
                    floors[msg.conversation_id] = max(floors.get(msg.conversation_id, 0), msg.seq)
                    if req.client_msg_id is not None:
                        args += [req.sender_id, req.client_msg_id, encode_message(msg)]
                        args[1] = int(req.idempotency_window)
                for conv, floor in floors.items():
                    await self._seed(conv, floor)
                if len(args) > 2:
                    await self._redis.eval(REMEMBER, [], args)
            self.degraded = False
            log.info("Redis is back: messages go through the stream again")
        except Exception as e:  # still unreachable: stay degraded, retry on next connect
            log.warn("Redis recovery postponed: {error}", error=str(e))
        finally:
            self._recovering = None

    def _hint(self, conv: str, seq: int) -> None:
        if seq > self._hints.get(conv, 0):
            self._hints[conv] = seq
            self._hints.move_to_end(conv)
            while len(self._hints) > HINTS_MAX:
                self._hints.popitem(last=False)

    def observe(self, frame: dict[str, Any]) -> None:
        """Called for every delivery this node sees: keeps seq hints fresh."""
        if frame.get("type") == "message":
            self._hint(str(frame["conversation"]), int(frame["seq"]))

    # -- conversations (SQL) -----------------------------------------------
    def open_conversation(self, customer_id: str, now: float) -> "Deferred[tuple[Conversation, bool]]":
        return self._sql.open_conversation(customer_id, now)

    def get_conversation(self, conversation_id: str) -> "Deferred[Conversation | None]":
        return Deferred.fromCoroutine(self._get_conversation(conversation_id))

    async def _get_conversation(self, conversation_id: str) -> Conversation | None:
        """SQL's row with Redis's newer last message, if it has one."""
        conv = await self._sql.get_conversation(conversation_id)
        if conv is None or self.degraded:
            return conv
        try:
            meta = await self._redis.execute(
                "HMGET", f"{self.prefix}meta:{conversation_id}", "last_seq", "last_msg_id", "last_ts")
        except RedisUnavailable:
            return conv
        if meta[0] is not None and int(meta[0]) > conv.last_seq:
            conv = replace(conv, last_seq=int(meta[0]), last_msg_id=meta[1], last_ts=float(meta[2]))
        return conv

    def remove_participant(self, conversation_id: str, user_id: str) -> "Deferred[bool]":
        return Deferred.fromCoroutine(self._remove_participant(conversation_id, user_id))

    async def _remove_participant(self, conversation_id: str, user_id: str) -> bool:
        """SQL first (authorization survives Redis), then the script's copy."""
        removed = await self._sql.remove_participant(conversation_id, user_id)
        if not self.degraded:
            try:
                await self._redis.execute("HDEL", f"{self.prefix}members:{conversation_id}", user_id)
            except Exception as e:
                if not is_unavailable(e):
                    raise
        return bool(removed)

    def list_conversations(self, user_id: str) -> "Deferred[list[Conversation]]":
        return self._sql.list_conversations(user_id)

    def list_unassigned(self, limit: int) -> "Deferred[list[Conversation]]":
        return self._sql.list_unassigned(limit)

    def get_participants(self, conversation_id: str) -> "Deferred[list[Participant]]":
        return self._sql.get_participants(conversation_id)

    # -- append ------------------------------------------------------------
    def append(self, request: AppendRequest) -> "Deferred[AppendResult]":
        return Deferred.fromCoroutine(self._append(request))

    async def _append(self, req: AppendRequest) -> AppendResult:
        if req.join:
            added = await self._sql.add_participant(req.conversation_id, req.sender_id, req.sender_role, req.ts)
            if not added:
                raise Conflict("already a participant")
            if not self.degraded:
                try:
                    await self._redis.execute("HSET", f"{self.prefix}members:{req.conversation_id}", req.sender_id, req.sender_role)
                except Exception as e:
                    if not is_unavailable(e):
                        raise
            req = replace(req, join=False)
        if self.overloaded and req.kind == "text":
            error = Overloaded(f"the server is catching up; retry in {self.retry_after:g} s")
            error.retry_after = self.retry_after
            raise error
        if self.degraded or self._recovering is not None:
            return await self._append_sql(req)
        wait = self.replicas
        if wait is not None and req.kind == "text":
            wait.check()
        try:
            connection = wait.connection() if wait is not None else None
            result = await self._append_redis(req)
            if wait is not None and not (req.kind != "text" and wait.closed):
                result = await self._confirm(wait, connection, req, result)
        except RedisUnavailable:
            if not self.degraded:
                log.warn("Redis did not answer: committing messages straight to SQL (degraded mode)")
            self.degraded = True
            return await self._append_sql(req)
        self._hint(req.conversation_id, result.message.seq)
        if req.client_msg_id is not None:
            self._remember_ack(req.sender_id, req.client_msg_id, result.message)
        return result

    async def _confirm(self, wait: ReplicaWait, connection: Any, req: AppendRequest,
                       result: AppendResult) -> AppendResult:
        """WAIT for the replicas before the ack. A text message they did not
        confirm is refused (the sender retries with the same client_msg_id);
        lifecycle events are confirmed on a best-effort basis."""
        key = (req.sender_id, req.client_msg_id) if req.client_msg_id is not None else None
        try:
            await wait.wait(connection, fence=result.duplicate)
        except ReplicasBehind:
            if req.kind != "text":
                return result
            if key is not None:
                self._unconfirmed[key] = None
                while len(self._unconfirmed) > RECENT_ACKS_MAX:
                    self._unconfirmed.popitem(last=False)
            raise
        if result.duplicate and key is not None and key in self._unconfirmed:
            # Its first attempt was refused before anyone heard of it: publish it now.
            del self._unconfirmed[key]
            return replace(result, duplicate=False)
        return result

    async def _append_redis(self, req: AppendRequest) -> AppendResult:
        msg_id = new_id("m", req.ts)
        draft = Message(req.conversation_id, msg_id, 0, req.sender_id, req.sender_role, req.client_msg_id,
                        req.kind, req.body, req.ts, req.data)
        head, tail = split_message_json(message_fields(draft))
        origin = self._fanout_origin
        if origin and req.data is not None and "attachments" in req.data:
            origin = ""  # its frame gets signed links: the bus publishes it
        for _ in range(3):
            reply = await self._redis.eval(APPEND, [], [
                self.prefix, req.conversation_id, req.sender_id, req.client_msg_id or "", req.kind,
                head, tail, msg_id, repr(req.ts), "1" if req.require_participant else "0",
                int(req.idempotency_window), KEY_TTL, self._hints.get(req.conversation_id, 0),
                origin, repr(self._clock.seconds()), frame_tail(draft) if origin else "", req.sender_role,
                self._bot_keep,
            ])
            status = reply[0]
            if status == "ok":
                # The stored JSON is head + seq + tail: only the seq is new.
                stored = replace(draft, seq=int(reply[1][len(head):reply[1].index(",", len(head))]))
                return AppendResult(stored, False, tuple(_pairs(reply[3:])), fanned_out=reply[2] == "1")
            if status == "dup":
                return AppendResult(decode_message(reply[1]), True, tuple(_pairs(reply[2:])))
            if status == "notfound":
                raise NotFound("no such conversation")
            await self._seed_from_sql(req.conversation_id)
        raise RedisUnavailable("could not seed the conversation in Redis")

    async def _seed_from_sql(self, conv_id: str) -> None:
        conv = await self._sql.get_conversation(conv_id)
        if conv is None:
            raise NotFound("no such conversation")
        participants = await self._sql.get_participants(conv_id)
        await self._seed(conv_id, max(conv.last_seq, self._hints.get(conv_id, 0)), participants)

    async def _seed(self, conv_id: str, floor: int, participants: list[Participant] | None = None) -> None:
        if participants is None:
            participants = await self._sql.get_participants(conv_id)
        args: list[Any] = [self.prefix, conv_id, floor, KEY_TTL]
        for p in participants:
            args += [p.user_id, p.role]
        await self._redis.eval(SEED, [], args)

    async def _append_sql(self, req: AppendRequest) -> AppendResult:
        if req.client_msg_id is not None:
            prior = self._recent_acks.get((req.sender_id, req.client_msg_id))
            if prior is not None:
                parts = await self._sql.get_participants(prior.conversation_id)
                return AppendResult(prior, True, tuple(parts))
        floor = self._hints.get(req.conversation_id, 0)
        result = await self._sql.append(replace(req, seq_floor=floor))
        if not result.duplicate:
            self.degraded_appends += 1
            self._degraded.append((req, result.message))
            self._hint(req.conversation_id, result.message.seq)
        return result

    def _remember_ack(self, sender_id: str, client_msg_id: str, message: Message) -> None:
        """Keep recent acks of this node for idempotency while Redis is down."""
        key = (sender_id, client_msg_id)
        self._recent_acks[key] = message
        self._recent_acks.move_to_end(key)
        while len(self._recent_acks) > RECENT_ACKS_MAX:
            self._recent_acks.popitem(last=False)

    # -- reads -------------------------------------------------------------
    def get_messages(self, conversation_id: str, after_seq: int, limit: int) -> "Deferred[list[Message]]":
        return Deferred.fromCoroutine(self._get_messages(conversation_id, after_seq, limit))

    async def _get_messages(self, conv: str, after: int, limit: int) -> list[Message]:
        recent: dict[int, Message] = {}
        if not self.degraded:
            try:
                # Redis first: a flush that trims after this read is in SQL below.
                raw = await self._redis.execute(
                    "ZRANGEBYSCORE", f"{self.prefix}recent:{conv}", f"({after}", "+inf", "LIMIT", 0, limit
                )
                for text in raw or []:
                    m = decode_message(text)
                    recent[m.seq] = m
            except RedisUnavailable:
                pass
        rows = await self._sql.get_messages(conv, after, limit)
        by_seq = {m.seq: m for m in rows}
        by_seq.update({s: m for s, m in recent.items() if s not in by_seq})
        out: list[Message] = []
        expected = after + 1
        for seq in sorted(by_seq):
            if seq != expected or len(out) >= limit:
                break  # never show N+1 before N is readable
            out.append(by_seq[seq])
            expected += 1
        return out

    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]":
        return Deferred.fromCoroutine(self._get_states(user_id))

    async def _get_states(self, user_id: str) -> list[SessionState]:
        """SQL's list and state, with Redis's newer counts where it has them.
        All reads are sent at once (one round trip on the connection)."""
        base = await self._sql.get_states(user_id)
        if self.degraded or not base:
            return base
        reads = []
        for s in base:
            reads.append(self._redis.execute(
                "HMGET", f"{self.prefix}meta:{s.conversation_id}", "last_seq", "last_msg_id", "last_ts"))
            reads.append(self._redis.execute(
                "HMGET", f"{self.prefix}state:{user_id}:{s.conversation_id}", "unread", "last_read_seq"))
        replies = await self._all_or_none(reads)
        if replies is None:
            return base
        out = []
        for i, s in enumerate(base):
            meta, sess = replies[2 * i], replies[2 * i + 1]
            if meta[0] is not None and int(meta[0]) >= s.last_seq:
                s = SessionState(
                    s.conversation_id,
                    int(sess[0]) if sess[0] is not None else s.unread,
                    int(sess[1]) if sess[1] is not None else s.last_read_seq,
                    int(meta[0]), meta[1], float(meta[2]) if meta[2] is not None else s.last_ts, s.status,
                )
            out.append(s)
        return out

    def read_positions(self, conversation_id: str) -> "Deferred[dict[str, int]]":
        return Deferred.fromCoroutine(self._read_positions(conversation_id))

    async def _read_positions(self, conv: str) -> dict[str, int]:
        """SQL's participants and positions, with Redis's where it has them
        (messages not yet flushed cannot be read positions in SQL)."""
        base = await self._sql.read_positions(conv)
        if self.degraded or not base:
            return base
        users = sorted(base)
        reads = [self._redis.execute("HGET", f"{self.prefix}state:{u}:{conv}", "last_read_seq") for u in users]
        replies = await self._all_or_none(reads)
        if replies is None:
            return base
        return {u: int(r) if r is not None else base[u] for u, r in zip(users, replies)}

    @staticmethod
    async def _all_or_none(reads: list["Deferred[Any]"]) -> list[Any] | None:
        """The replies of reads sent at once (one round trip), or None when
        Redis is unavailable (callers fall back to SQL)."""
        try:
            return list(await gatherResults(reads, consumeErrors=True))
        except FirstError as e:
            if e.subFailure.check(RedisUnavailable):
                return None
            e.subFailure.raiseException()
            raise  # unreachable: raiseException always raises

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        return Deferred.fromCoroutine(self._mark_read(user_id, conversation_id, seq))

    async def _mark_read(self, user_id: str, conv: str, seq: int) -> int:
        # SQL keeps the read position too, so it survives a Redis loss.
        sql_unread = await self._sql.mark_read(user_id, conv, seq)
        if self.degraded:
            return sql_unread
        try:
            unread = int(await self._redis.eval(MARK_READ, [], [self.prefix, conv, user_id, seq]))
        except RedisUnavailable:
            return sql_unread
        if unread < 0:
            await self._seed_from_sql(conv)
            unread = int(await self._redis.eval(MARK_READ, [], [self.prefix, conv, user_id, seq]))
        return max(unread, 0)
