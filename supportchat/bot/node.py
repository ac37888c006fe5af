"""The bot node: answers committed customer messages through the normal
append path, keeping its dialogue state in a ``BotStateStore``.

Sources of work:
- Redis mode: ``StreamBotConsumer`` reads ``{prefix}bot`` (the APPEND
  script adds there only what the bot can answer: customers' texts in
  conversations without an agent, and the system's events) as consumer
  group ``bots`` (at-least-once; entries of a dead node are claimed after
  ``claim_idle``), and greetings come from new-conversation deliveries.
- Embedded default: ``LocalBotFeed`` sees every delivery on the in-process
  bus (committed messages and new conversations); on start,
  ``BotNode.recover`` answers recent conversations whose last message is a
  customer's (a crash between commit and answer loses nothing).

Exactly one answer per customer message: replies are appended with
``client_msg_id = "bot:<triggering msg_id>"`` (``:<n>`` for the n-th
further reply), so a redelivery or a second node finds them already
stored; the state (with the replies as its outbox) is saved by
compare-and-set before they are appended, so only one node decides.

Participation: bot messages are appended with ``require_participant=False``
(the bot never joins), sender role ``bot``; they reach the conversation's
participants live and count as unread like any text message.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any, Awaitable, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.background import BackgroundTasks
from supportchat.handlers.writer import MessageWriter
from supportchat.bot.engine import Dialogue, ExternalAnswer
from supportchat.hours import BusinessHours
from supportchat.bot.http import ExternalBot
from supportchat.bot.matcher import language
from supportchat.bot.state import BotState, BotStateStore, Reply
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.config.model import BotConfig
from supportchat.metrics import Metrics
from supportchat.redis.consumer import Entries, StreamConsumer
from supportchat.storage.database import Cursor, Database
from supportchat.storage.interfaces import ConversationStore
from supportchat.storage.models import EVENT, TEXT, AppendRequest, AppendResult, Message, principal_key
from supportchat.storage.rows import msg_from_row as _msg

log = Logger()

BOT_ROLE = "bot"
HUMAN_ROLES = ("agent", "admin")
SILENCED_MAX = 100_000
SAVE_ATTEMPTS = 8


def message_from_wire(frame: dict[str, Any]) -> Message:
    """The stored message a delivered frame shows (the sender's id back to
    their principal key)."""
    sender = frame.get("sender") or {}
    role = str(sender.get("role"))
    return Message(
        conversation_id=str(frame["conversation"]), msg_id=str(frame["msg_id"]), seq=int(frame["seq"]),
        sender_id=principal_key(role, str(sender.get("id"))), sender_role=role,
        client_msg_id=frame.get("client_msg_id"),
        kind=str(frame["kind"]), body=str(frame.get("body", "")), ts=float(frame["ts"]), data=frame.get("event"),
    )


class BotNode:
    def __init__(self, clock: IReactorTime, store: ConversationStore, writer: MessageWriter, states: BotStateStore,
                 dialogue: Dialogue,
                 hours: BusinessHours, metrics: Metrics, config: BotConfig, external: ExternalBot | None = None,
                 idempotency_window: float = 86400.0,
                 on_handoff: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._clock = clock
        self._store = store
        self._writer = writer
        self._states = states
        self.dialogue = dialogue
        self._hours = hours
        self._metrics = metrics
        self._config = config
        self._external = external
        self._window = idempotency_window
        # The support workflow's seam: the conversation enters the queue
        # (idempotent; called again when a handoff is re-sent).
        self._on_handoff = on_handoff
        self._chains: dict[str, Deferred[None]] = {}
        # Conversations a human has: the bot stays silent there for good (a
        # reopened conversation goes back to the queue, not to the bot), so
        # once seen, no more state or participant reads per message.
        self._silenced: OrderedDict[str, None] = OrderedDict()
        self.handled = 0
        self.conflicts = 0

    # -- serialisation per conversation ---------------------------------
    def _serial(self, conversation_id: str, fn: Callable[[], Any]) -> "Deferred[None]":
        """Run ``fn`` after earlier work on the same conversation (this node)."""
        prior = self._chains.get(conversation_id)
        done: Deferred[None] = Deferred()

        def run(_: object = None) -> None:
            d = Deferred.fromCoroutine(fn())

            def finished(result: Any) -> None:
                if self._chains.get(conversation_id) is done:
                    del self._chains[conversation_id]
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)

            d.addBoth(finished)

        self._chains[conversation_id] = done
        if prior is None:
            run()
        else:
            prior.addBoth(run)
        return done

    def idle(self) -> "Deferred[None]":
        pending = list(self._chains.values())
        return DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def handle(self, msg: Message) -> "Deferred[None]":
        """Answer one committed message (ignores all but customers' texts,
        and texts that are only attachments);
        the workflow's ``created`` event greets. In Redis mode it comes from
        the stream, at least once, so a greeting no longer depends on the
        lossy pub/sub ``conversation`` frame (both paths greet once: the
        greeting is idempotent and recorded in the bot's state)."""
        if msg.kind == EVENT and msg.sender_role == "system" and (msg.data or {}).get("name") == "created":
            if self._clock.seconds() - msg.ts > self._config.max_age:
                return succeed(None)
            return self.greet(msg.conversation_id)
        if msg.sender_role != "customer" or msg.kind != TEXT:
            return succeed(None)
        if not msg.body.strip():
            # Only attachments (a photo, a PDF): nothing to match, and no
            # "I did not understand" for it; a human reads it after handoff.
            return succeed(None)
        return self._serial(msg.conversation_id, lambda: self._handle(msg))

    def greet(self, conversation_id: str) -> "Deferred[None]":
        return self._serial(conversation_id, lambda: self._greet(conversation_id))

    # -- work ------------------------------------------------------------
    async def _humans_present(self, conversation_id: str) -> bool:
        if conversation_id in self._silenced:
            return True
        participants = await self._store.get_participants(conversation_id)
        if any(p.role in HUMAN_ROLES for p in participants):
            self._silence(conversation_id)
            return True
        return False

    def may_answer(self, conversation_id: str | None, sender_role: str | None, kind: str | None) -> bool:
        """Whether a stream entry with these fields (conversation, sender
        role, kind: the APPEND script writes them beside the message) can
        concern the bot; false ones are acknowledged without decoding them:
        staff messages, events other than the system's, and every message
        of a conversation a human has. Entries without the fields (written
        by older nodes) may."""
        if sender_role is None or conversation_id is None:
            return True
        if sender_role == "system":
            return kind == EVENT
        return sender_role == "customer" and kind == TEXT and conversation_id not in self._silenced

    def is_silenced(self, conversation_id: str) -> bool:
        """Known to have a human in it: the bot never answers there again."""
        return conversation_id in self._silenced

    def _silence(self, conversation_id: str) -> None:
        self._silenced[conversation_id] = None
        self._silenced.move_to_end(conversation_id)
        while len(self._silenced) > SILENCED_MAX:
            self._silenced.popitem(last=False)

    async def _greet(self, conversation_id: str) -> None:
        for _ in range(SAVE_ATTEMPTS):
            state = await self._states.load(conversation_id) or BotState(conversation_id)
            if state.greeted or await self._humans_present(conversation_id):
                return
            conv = await self._store.get_conversation(conversation_id)
            if conv is None or conv.status != "open":
                return
            # Append first (idempotent by its key), then record it: a crash in
            # between leaves a greeting that the next attempt finds stored.
            await self._send(conversation_id, f"greet:{conversation_id}", (self.dialogue.greeting(),), None, True)
            if await self._states.save(state.next(greeted=True, updated_at=self._clock.seconds())):
                return
            self.conflicts += 1

    async def _handle(self, msg: Message) -> None:
        now = self._clock.seconds()
        if now - msg.ts > self._config.max_age or msg.conversation_id in self._silenced:
            return
        for _ in range(SAVE_ATTEMPTS):
            state = await self._states.load(msg.conversation_id) or BotState(msg.conversation_id)
            if msg.seq <= state.last_seq:
                if state.last_msg_id == msg.msg_id and state.outbox:
                    # Decided before (this node died, or another node is on it):
                    # append exactly those replies; stored ones come back as duplicates.
                    await self._send(msg.conversation_id, msg.msg_id, state.outbox, msg, True)
                return
            if state.mode == "handed_off" or await self._humans_present(msg.conversation_id):
                return  # silent: a human has it (or will)
            match = self.dialogue.classify(msg.body)
            external: ExternalAnswer | None = None
            if self._external is not None and self.dialogue.needs_external(state, match):
                external = await self._ask_external(msg, state)
            outcome = self.dialogue.step(state, msg.body, msg.seq, msg.msg_id, now, self._hours.is_open(now),
                                         match, external)
            new_state = replace(outcome.state, outbox=outcome.replies)
            if not await self._states.save(new_state):
                self.conflicts += 1
                continue
            self.handled += 1
            m = self._metrics
            if outcome.handoff:
                m.bot_handoffs.labels(outcome.handoff).inc()
            if outcome.answered:
                m.bot_answers.labels("knowledge" if outcome.answered != "external" else "external").inc()
            elif not outcome.handoff and outcome.replies:
                m.bot_answers.labels("other").inc()
            if outcome.resolved:
                m.bot_resolved.inc()
            await self._send(msg.conversation_id, msg.msg_id, outcome.replies, msg, False)
            return
        log.warn("bot gave up on a message after {n} state conflicts", n=SAVE_ATTEMPTS)

    async def _ask_external(self, msg: Message, state: BotState) -> ExternalAnswer | None:
        assert self._external is not None
        history = await self._store.get_messages(msg.conversation_id, max(0, msg.seq - 11), 10)
        context = {
            "conversation": msg.conversation_id,
            "message": {"msg_id": msg.msg_id, "seq": msg.seq, "body": msg.body, "lang": language(msg.body)},
            "state": {"mode": state.mode, "misses": state.misses, "answered": state.answered},
            "history": [{"seq": m.seq, "role": m.sender_role, "kind": m.kind, "body": m.body} for m in history],
        }
        try:
            answer = await self._external.ask(context)
        except Exception:
            log.failure("external bot call failed")
            answer = None
        self._metrics.bot_external.labels("ok" if answer is not None else "failed").inc()
        return answer

    async def _send(self, conversation_id: str, trigger: str, replies: tuple[Reply, ...], msg: Message | None,
                    redelivery: bool) -> None:
        for i, r in enumerate(replies):
            key = f"bot:{trigger}" if i == 0 else f"bot:{trigger}:{i}"
            now = self._clock.seconds()
            on_stored = self._observe_latency(msg) if i == 0 and msg is not None else None
            # A redelivery finishes a decision a crashed node may have stored
            # but not delivered: its replies are published even if stored.
            result = await self._writer.write(AppendRequest(
                conversation_id=conversation_id, sender_id=self._config.user_id, sender_role=BOT_ROLE,
                kind=r.kind, body=r.body, ts=now, client_msg_id=key, data=r.data, require_participant=False,
                idempotency_window=self._window,
            ), republish=redelivery, on_stored=on_stored)
            assert result is not None  # no join: never skipped
            if r.kind == EVENT and (r.data or {}).get("name") == "handoff":
                await self._handed_off(conversation_id)

    def _observe_latency(self, msg: Message) -> Callable[[AppendResult], None]:
        """The first reply's latency from the customer's message, once stored (not for a duplicate)."""
        def observe(result: AppendResult) -> None:
            if not result.duplicate:
                self._metrics.bot_reply_latency.observe(max(0.0, self._clock.seconds() - msg.ts))
        return observe

    async def _handed_off(self, conversation_id: str) -> None:
        if self._on_handoff is not None:
            await self._on_handoff(conversation_id)

    # -- embedded recovery -----------------------------------------------
    async def recover(self, db: Database) -> int:
        """Answer what a crash left unanswered (embedded mode): open
        conversations active within ``max_age`` whose last message is a
        customer's text, or that have no message yet (greeting)."""
        since = self._clock.seconds() - self._config.max_age
        rows = await db.run_interaction("bot_recover", recover_txn, since)
        for conv_id, last in rows:
            if last is None:
                await self.greet(conv_id)
            else:
                await self.handle(last)
        return len(rows)


def recover_txn(cur: Cursor, since: float) -> list[tuple[str, Message | None]]:
    cur.execute(
        "SELECT c.id, c.last_seq FROM conversations c WHERE c.status = 'open'"
        " AND (c.last_ts >= ? OR (c.last_seq = 0 AND c.created_at >= ?)) ORDER BY c.id",
        (since, since),
    )
    out: list[tuple[str, Message | None]] = []
    for conv_id, last_seq in cur.fetchall():
        if int(last_seq) == 0:
            out.append((conv_id, None))
            continue
        cur.execute(
            "SELECT conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts, data"
            " FROM messages WHERE conversation_id = ? AND seq = ?",
            (conv_id, last_seq),
        )
        row = cur.fetchone()
        if row is not None and row[4] == "customer" and row[6] == TEXT:
            out.append((conv_id, _msg(row)))
    return out


class LocalBotFeed:
    """Bus deliveries -> bot work. ``messages`` False (Redis mode): only
    new conversations (greetings); the stream brings the messages."""

    def __init__(self, node: BotNode, bus: MessageBus, background: BackgroundTasks, messages: bool) -> None:
        self._node = node
        self._bus = bus
        self._background = background
        self._messages = messages
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(self._on_delivery)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_delivery(self, delivery: Delivery) -> None:
        frame = delivery.frame
        kind = frame.get("type")
        if kind == "conversation":
            conv = frame.get("conversation") or {}
            if conv.get("status") == "open" and int(conv.get("last_seq") or 0) == 0 and conv.get("id"):
                self._background.run("bot_greet", self._node.greet, str(conv["id"]))
        elif kind == "message" and self._messages:
            sender = frame.get("sender") or {}
            if (sender.get("role") == "customer" and frame.get("kind") == TEXT
                    and not self._node.is_silenced(str(frame.get("conversation")))):
                self._background.run("bot_reply", self._node.handle, message_from_wire(frame))


class BotService(MultiService):
    """Starts the feed (and the stream consumer or the recovery scan) and,
    when stopping, waits (bounded) for answers in progress."""

    def __init__(self, clock: IReactorTime, node: BotNode, feed: LocalBotFeed, background: BackgroundTasks,
                 recover_db: Database | None, shutdown_timeout: float) -> None:
        super().__init__()
        self._clock = clock
        self.node = node
        self._feed = feed
        self._background = background
        self._recover_db = recover_db
        self._timeout = shutdown_timeout

    def startService(self) -> None:
        self._feed.start()
        super().startService()
        if self._recover_db is not None:
            self._background.run("bot_recover", self._recover, self._recover_db)
        log.info("Bot node started")

    def _recover(self, db: Database) -> "Deferred[int]":
        return Deferred.fromCoroutine(self.node.recover(db))

    def stopService(self) -> "Deferred[Any]":
        self._feed.stop()
        d: Deferred[Any] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await super().stopService()
        idle = self.node.idle()
        idle.addTimeout(self._timeout, self._clock)
        try:
            await idle
        except Exception:
            log.warn("bot answers still running at shutdown")


class StreamBotConsumer(StreamConsumer):
    """Consumer group ``bots`` on the bots' stream ``{prefix}bot`` (Redis mode)."""

    GROUP = "bots"
    what = "Bot consumer"

    def __init__(self, clock: IReactorTime, redis: Any, node: BotNode, consumer: str, prefix: str = "sc:",
                 batch: int = 100, block_ms: int = 500, claim_idle_ms: int = 10000, max_deliveries: int = 5) -> None:
        super().__init__(clock, redis, consumer, f"{prefix}bot", self.GROUP, batch, block_ms, claim_idle_ms,
                         max_deliveries, claim_every=5)
        self._node = node
        self.acked = 0

    async def handle(self, entries: Entries, retry: bool) -> None:
        await self._process(entries, retry)

    async def _process(self, entries: list[tuple[str, dict[str, str]]], retry: bool) -> None:
        from supportchat.redis.codec import decode_message

        if retry:
            give_up = await self.over_delivered([e for e, _ in entries])
            if give_up:
                log.warn("bot consumer skips {n} entries after {max} attempts", n=len(give_up), max=self._max_deliveries)
                await self._redis.execute("XACK", self.stream, self.GROUP, *sorted(give_up))
                entries = [(e, f) for e, f in entries if e not in give_up]
        done: list[str] = []
        work: list[Deferred[Any]] = []
        ids: list[str] = []
        for entry_id, fields in entries:
            if not self._node.may_answer(fields.get("c"), fields.get("r"), fields.get("k")):
                done.append(entry_id)  # skipped without decoding it
                continue
            try:
                msg = decode_message(fields["m"])
            except Exception:
                done.append(entry_id)  # not a message: nothing for the bot
                continue
            ids.append(entry_id)
            work.append(self._node.handle(msg))
        results = await DeferredList(work, consumeErrors=True)
        for entry_id, (ok, _) in zip(ids, results):
            if ok:
                done.append(entry_id)
        if done:
            await self._redis.execute("XACK", self.stream, self.GROUP, *done)
            self.acked += len(done)
        if len(done) < len(entries):
            await self._pause(0.5)

