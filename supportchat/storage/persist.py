"""Flushing already-sequenced messages (from the Redis stream) into SQL.

Idempotent: a message is inserted only if its msg_id is new, so a batch
replayed after a persister crash changes nothing the second time. Work is
set-based (a few statements per batch and per conversation, not per
message), so larger batches cost fewer round trips on server databases.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Iterable, NamedTuple, Sequence, TypeVar

from supportchat.storage.database import Cursor, insert_every
from supportchat.storage.models import EVENT, Message

_COLS = "conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts, data"
_IDEM_COLS = "sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at"
CHUNK = 200

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class PersistResult(NamedTuple):
    inserted: int
    # Unknown conversation: nothing sensible to do but the dead-letter stream.
    refused: list[str]
    # Conversations where a message was moved to a new seq, with the highest
    # seq handed out (Redis's counter must be raised to it).
    resequenced: dict[str, int]


def persist_batch_txn(cur: Cursor, messages: list[Message], idempotency_window: float) -> PersistResult:
    """Insert the messages not stored yet (by msg_id). Two conflicts that only
    follow Redis losing writes are repaired rather than dropped, because each
    message was acknowledged: a seq already taken by another message moves the
    newcomer to the end of the conversation; a client_msg_id already stored as
    another message (a retry Redis no longer recognised) becomes a
    ``duplicate`` event at its seq, so the sequence keeps no hole."""
    if not messages:
        return PersistResult(0, [], {})
    existing: set[str] = set()
    for chunk in _chunks([m.msg_id for m in messages]):
        cur.execute(f"SELECT msg_id FROM messages WHERE msg_id IN ({_marks(len(chunk))})", tuple(chunk))
        existing.update(r[0] for r in cur.fetchall())
    todo = [m for m in messages if m.msg_id not in existing]
    refused: list[str] = []
    by_conv: dict[str, list[Message]] = {}
    for m in todo:
        by_conv.setdefault(m.conversation_id, []).append(m)
    known: set[str] = set()
    for chunk in _chunks(sorted(by_conv)):
        cur.execute(f"SELECT id FROM conversations WHERE id IN ({_marks(len(chunk))})", tuple(chunk))
        known.update(r[0] for r in cur.fetchall())
    keep: list[Message] = []
    moved: list[Message] = []
    for conv, msgs in by_conv.items():
        if conv not in known:
            refused.extend(m.msg_id for m in msgs)
            continue
        taken: set[int] = set()
        for seqs in _chunks([m.seq for m in msgs]):
            cur.execute(
                f"SELECT seq FROM messages WHERE conversation_id = ? AND seq IN ({_marks(len(seqs))})",
                (conv, *seqs),
            )
            taken.update(int(r[0]) for r in cur.fetchall())
        for m in msgs:
            (moved if m.seq in taken else keep).append(m)
    by_sender: dict[str, list[Message]] = {}
    for m in keep + moved:
        if m.client_msg_id is not None:
            by_sender.setdefault(m.sender_id, []).append(m)
    original: dict[str, str] = {}
    for sender, sent in by_sender.items():
        for group in _chunks(sent):
            cur.execute(
                f"SELECT client_msg_id, msg_id FROM idempotency_keys WHERE sender_id = ?"
                f" AND client_msg_id IN ({_marks(len(group))})",
                (sender, *[m.client_msg_id for m in group]),
            )
            stored = {r[0]: r[1] for r in cur.fetchall()}
            for m in group:
                if stored.get(m.client_msg_id, m.msg_id) != m.msg_id:
                    original[m.msg_id] = stored[m.client_msg_id]
    # A retry stored already: its seq slot becomes a visible no-op event.
    keep = [
        replace(m, kind=EVENT, body="", client_msg_id=None, data={"name": "duplicate", "of": original[m.msg_id]})
        if m.msg_id in original else m
        for m in keep
    ]
    moved = [m for m in moved if m.msg_id not in original]  # stored already, and its slot is taken
    resequenced: dict[str, int] = {}
    if keep:
        _insert_txn(cur, keep, idempotency_window)
    for m in sorted(moved, key=lambda x: (x.conversation_id, x.seq)):
        # Lock the conversation row (as appends do) before reading the top seq.
        cur.execute("SELECT last_seq FROM conversations WHERE id = ?" + cur.engine.for_update(), (m.conversation_id,))
        cur.fetchone()
        cur.execute("SELECT MAX(seq) FROM messages WHERE conversation_id = ?", (m.conversation_id,))
        top = max(int(cur.fetchone()[0] or 0), resequenced.get(m.conversation_id, 0))
        fresh = replace(m, seq=top + 1)
        _insert_txn(cur, [fresh], idempotency_window)
        resequenced[m.conversation_id] = fresh.seq
        keep.append(fresh)
    if keep:
        _update_conversations_txn(cur, keep)
    return PersistResult(len(keep), refused, resequenced)


def _insert_txn(cur: Cursor, msgs: list[Message], idempotency_window: float) -> None:
    insert_every(
        cur, cur.engine.insert_ignore("messages", _COLS, _marks(10), key="msg_id"),
        [(m.conversation_id, m.msg_id, m.seq, m.sender_id, m.sender_role, m.client_msg_id, m.kind, m.body, m.ts,
          None if m.data is None else json.dumps(m.data)) for m in msgs], "message",
    )
    keyed = [m for m in msgs if m.client_msg_id is not None]
    if keyed:
        cur.executemany(
            cur.engine.insert_ignore("idempotency_keys", _IDEM_COLS, _marks(7), key="sender_id, client_msg_id"),
            [(m.sender_id, m.client_msg_id, m.conversation_id, m.msg_id, m.seq, m.ts, m.ts + idempotency_window)
             for m in keyed],
        )


def _update_conversations_txn(cur: Cursor, kept: list[Message]) -> None:
    """Last message per conversation; read positions and unread counts (the
    SQL copy of the session state, used when Redis has lost it)."""
    by_conv: dict[str, list[Message]] = {}
    for m in kept:
        by_conv.setdefault(m.conversation_id, []).append(m)
    for conv, msgs in sorted(by_conv.items()):
        last = max(msgs, key=lambda m: m.seq)
        cur.execute(
            "UPDATE conversations SET last_seq = ?, last_msg_id = ?, last_ts = ? WHERE id = ? AND last_seq < ?",
            (last.seq, last.msg_id, last.ts, conv, last.seq),
        )
        texts: dict[str, int] = {}
        latest: dict[str, int] = {}
        for m in msgs:
            latest[m.sender_id] = max(latest.get(m.sender_id, 0), m.seq)
            if m.kind != EVENT:
                texts[m.sender_id] = texts.get(m.sender_id, 0) + 1
        for sender, count in sorted(texts.items()):
            cur.execute(
                "UPDATE participants SET unread = unread + ? WHERE conversation_id = ? AND user_id <> ?",
                (count, conv, sender),
            )
        for sender, seq in sorted(latest.items()):
            cur.execute(
                "UPDATE participants SET last_read_seq = ?, unread = 0"
                " WHERE conversation_id = ? AND user_id = ? AND last_read_seq < ?",
                (seq, conv, sender, seq),
            )
