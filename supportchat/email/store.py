"""Email subscriptions and the durable email outbox in SQL (migration 016).

Nothing is added to the message append path: :meth:`SqlEmailStore.derive`
reads the ``messages`` log after each subscription's ``read_seq`` and, in
the same transaction that moves ``read_seq``, writes the composed emails
to ``email_outbox``; so a crash either keeps both or neither. Internal
notes live in ``work_notes``, never in ``messages``: no email can carry
one."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred

from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import EVENT, Message
from supportchat.storage.rows import MSG_COLS, msg_from_row

_COUNTER = itertools.count()
PAGE = 100  # log entries read per subscription and round
SUB_COLS = "conversation_id, address, lang, replies, transcript, transcript_sent, read_seq, thread_root, thread_last"


@dataclass(frozen=True)
class Subscription:
    conversation_id: str
    address: str
    lang: str
    replies: bool
    transcript: bool
    transcript_sent: bool
    read_seq: int
    thread_root: str | None
    thread_last: str | None


@dataclass(frozen=True)
class Outgoing:
    email_id: str
    conversation_id: str
    kind: str
    recipient: str
    body: bytes
    created_at: float
    attempts: int


# (subscription, the new chat message) -> (Message-ID, RFC 5322 bytes)
ComposeReply = Callable[[Subscription, Message], tuple[str, bytes]]
# (subscription, every chat message of the conversation) -> (Message-ID, bytes)
ComposeTranscript = Callable[[Subscription, list[Message]], tuple[str, bytes]]


def _sub(row: Any) -> Subscription:
    return Subscription(row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]), int(row[6]), row[7],
                        row[8])


def _first_lang(cur: Cursor, conversation_id: str) -> str:
    """The language ``start`` said, kept in the ``created`` entry's data."""
    cur.execute("SELECT kind, data FROM messages WHERE conversation_id = ? AND seq = 1", (conversation_id,))
    row = cur.fetchone()
    if row is None or row[0] != EVENT or not row[1]:
        return ""
    try:
        data = json.loads(row[1])
    except ValueError:
        return ""
    lang = data.get("lang") if isinstance(data, dict) else None
    return lang if isinstance(lang, str) else ""


class SqlEmailStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def subscribe(self, conversation_id: str, address: str, lang: str, transcript: bool,
                  now: float, customer: str | None = None, replies: bool = True) -> "Deferred[str]":
        """Keep ``address`` for the conversation: agent replies written from
        now on are emailed; with ``transcript``, the conversation at close.
        ``lang`` empty: the language ``start`` gave, if any. With
        ``customer`` (a principal key) only that customer's conversation.
        ``replies`` False: the transcript only (a visitor chatting live).
        Returns "ok", "missing" or "forbidden"."""

        def txn(cur: Cursor) -> str:
            cur.execute("SELECT customer_id, last_seq FROM conversations WHERE id = ?", (conversation_id,))
            conv = cur.fetchone()
            if conv is None:
                return "missing"
            if customer is not None and conv[0] != customer:
                return "forbidden"
            language = lang or _first_lang(cur, conversation_id)
            cur.execute("UPDATE email_subscriptions SET address = ?, lang = ?, replies = ?, transcript = ?,"
                        " unsubscribed_at = NULL WHERE conversation_id = ?",
                        (address, language, int(replies), int(transcript), conversation_id))
            if cur.rowcount:
                return "ok"
            cur.execute(f"INSERT INTO email_subscriptions ({SUB_COLS}, created_at) VALUES"
                        " (?, ?, ?, ?, ?, 0, ?, NULL, NULL, ?)",
                        (conversation_id, address, language, int(replies), int(transcript), int(conv[1]), now))
            return "ok"

        return self._db.run_interaction("email_subscribe", txn)

    def subscription(self, conversation_id: str) -> "Deferred[Subscription | None]":
        def txn(cur: Cursor) -> Subscription | None:
            cur.execute(f"SELECT {SUB_COLS} FROM email_subscriptions WHERE conversation_id = ?"
                        " AND unsubscribed_at IS NULL", (conversation_id,))
            row = cur.fetchone()
            return _sub(row) if row else None

        return self._db.run_interaction("email_subscription", txn)

    def unsubscribe(self, conversation_id: str, now: float) -> "Deferred[bool]":
        """No more emails for the conversation; queued ones are dropped."""

        def txn(cur: Cursor) -> bool:
            cur.execute("UPDATE email_subscriptions SET unsubscribed_at = ? WHERE conversation_id = ?"
                        " AND unsubscribed_at IS NULL", (now, conversation_id))
            changed = cur.rowcount > 0
            cur.execute("UPDATE email_outbox SET state = 'cancelled', next_at = ? WHERE conversation_id = ?"
                        " AND state = 'pending'", (now, conversation_id))
            return changed

        return self._db.run_interaction("email_unsubscribe", txn)

    def derive(self, now: float, reply: ComposeReply, transcript: ComposeTranscript,
               limit: int = 200) -> "Deferred[int]":
        """Turn new log entries of subscribed conversations into outbox
        emails (agent text/attachment messages -> replies; ``closed`` ->
        the transcript, once). Returns how many emails were queued."""

        def txn(cur: Cursor) -> int:
            cur.execute(f"SELECT {', '.join('s.' + c.strip() for c in SUB_COLS.split(','))}"
                        " FROM email_subscriptions s JOIN conversations c ON c.id = s.conversation_id"
                        " WHERE s.unsubscribed_at IS NULL AND c.last_seq > s.read_seq"
                        " ORDER BY s.conversation_id LIMIT ?", (limit,))
            subs = [_sub(r) for r in cur.fetchall()]
            queued = 0
            for sub in subs:
                cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ?"
                            " ORDER BY seq LIMIT ?", (sub.conversation_id, sub.read_seq, PAGE))
                entries = [msg_from_row(r) for r in cur.fetchall()]
                root, last, sent = sub.thread_root, sub.thread_last, sub.transcript_sent
                for m in entries:
                    current = Subscription(sub.conversation_id, sub.address, sub.lang, sub.replies, sub.transcript,
                                           sent, m.seq, root, last)
                    if m.kind != EVENT and m.sender_role == "agent" and sub.replies:
                        mid, body = reply(current, m)
                    elif (m.kind == EVENT and (m.data or {}).get("name") == "closed" and sub.transcript
                          and not sent):
                        cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq <= ?"
                                    " ORDER BY seq", (sub.conversation_id, m.seq))
                        mid, body = transcript(current, [msg_from_row(r) for r in cur.fetchall()])
                        sent = True
                    else:
                        continue
                    kind = "transcript" if m.kind == EVENT else "reply"
                    _enqueue_txn(cur, sub.conversation_id, kind, sub.address, body, now)
                    root = root or mid
                    last = mid
                    queued += 1
                if entries:
                    cur.execute("UPDATE email_subscriptions SET read_seq = ?, thread_root = ?, thread_last = ?,"
                                " transcript_sent = ? WHERE conversation_id = ?",
                                (entries[-1].seq, root, last, int(sent), sub.conversation_id))
            return queued

        return self._db.run_interaction("email_derive", txn)

    def due(self, now: float, limit: int = 50) -> "Deferred[list[Outgoing]]":
        """Pending emails to send now, in the order they were queued; per
        conversation only the oldest pending one (a retrying email holds
        back the later ones of its thread)."""

        def txn(cur: Cursor) -> list[Outgoing]:
            cur.execute("SELECT email_id, conversation_id, kind, recipient, body, created_at, attempts, next_at"
                        " FROM email_outbox WHERE state = 'pending' ORDER BY email_id LIMIT ?", (limit * 10,))
            out: list[Outgoing] = []
            seen: set[str] = set()
            for r in cur.fetchall():
                if r[1] in seen:
                    continue
                seen.add(r[1])
                if float(r[7]) <= now and len(out) < limit:
                    out.append(Outgoing(r[0], r[1], r[2], r[3], r[4].encode("utf-8"), float(r[5]), int(r[6])))
            return out

        return self._db.run_interaction("email_due", txn)

    def sent(self, email_id: str, now: float) -> "Deferred[None]":
        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE email_outbox SET state = 'sent', attempts = attempts + 1, last_error = NULL,"
                        " next_at = ? WHERE email_id = ?", (now, email_id))

        return self._db.run_interaction("email_sent", txn)

    def failed(self, email_id: str, next_at: float, error: str, dead: bool) -> "Deferred[None]":
        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE email_outbox SET state = ?, attempts = attempts + 1, next_at = ?, last_error = ?"
                        " WHERE email_id = ?", ("dead" if dead else "pending", next_at, error[:200], email_id))

        return self._db.run_interaction("email_failed", txn)

    def purge(self, before: float) -> "Deferred[int]":
        """Delete settled emails (sent, dead, cancelled) whose last attempt
        was before ``before``: their bodies hold the conversation."""

        def txn(cur: Cursor) -> int:
            n = 0
            for state in ("sent", "dead", "cancelled"):
                cur.execute("DELETE FROM email_outbox WHERE state = ? AND next_at < ?", (state, before))
                n += cur.rowcount
            return n

        return self._db.run_interaction("email_purge", txn)

    def outbox_states(self) -> "Deferred[dict[str, int]]":
        """How many emails are in each state (pending, sent, dead, cancelled)."""

        def txn(cur: Cursor) -> dict[str, int]:
            cur.execute("SELECT state, COUNT(*) FROM email_outbox GROUP BY state")
            return {r[0]: int(r[1]) for r in cur.fetchall()}

        return self._db.run_interaction("email_states", txn)


def _enqueue_txn(cur: Cursor, conversation_id: str, kind: str, recipient: str, body: bytes, now: float) -> str:
    # Sortable: queued order (milliseconds, then this process's counter).
    email_id = f"eml_{int(now * 1000):013x}{next(_COUNTER):08x}{os.urandom(4).hex()}"
    cur.execute("INSERT INTO email_outbox (email_id, conversation_id, kind, recipient, body, created_at, attempts,"
                " next_at, state) VALUES (?, ?, ?, ?, ?, ?, 0, ?, 'pending')",
                (email_id, conversation_id, kind, recipient, body.decode("utf-8"), now, now))
    return email_id
