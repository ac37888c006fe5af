"""Flushing already-sequenced messages (from the Redis stream) into SQL.

Idempotent: a message is inserted only if its msg_id is new, so a batch
replayed after a persister crash changes nothing the second time.

Set-based like the append transaction (storage/append.py, with the
statements of storage/bulk.py): a batch costs a fixed handful of
statements whatever its size and however many conversations it spans:
one read each for the msg_ids already stored, the conversations
(``last_seq``), the seqs already taken (only for messages at or below a
conversation's ``last_seq``, which a lone persister never sees), the
idempotency keys and the participants; multi-row inserts of the messages
and their keys; one ``UPDATE ... FROM (VALUES ...)`` each for the
conversations and the participants (row by row on MySQL). The first
version ran four or more statements per conversation in the batch.

Several persisters may flush at once (a consumer group): nothing is
locked in the common case. The conversation update only moves
``last_seq`` forward (``WHERE last_seq < new``), unread counts are
increments, a read position only moves forward, and a row another writer
inserted first makes the insert fail (:class:`RowSkipped`, or the unique
index) and the batch retried. Only a seq clash locks: the clashing
conversations' rows, in id order, before their top seq is read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from supportchat.storage.bulk import (
    conversations_txn,
    idempotency_many_txn,
    insert_rows,
    members_txn,
    messages_by_id_txn,
    parts,
    update_rows,
)
from supportchat.storage.database import Cursor
from supportchat.storage.models import EVENT, Message, Participant
from supportchat.storage.rows import IDEM_COLS, MSG_COLS, msg_to_row


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
    message was acknowledged: a seq already taken by another message (stored,
    or earlier in the batch) moves the newcomer to the end of the
    conversation; a client_msg_id already stored as another message (a retry
    Redis no longer recognised) becomes a ``duplicate`` event at its seq, so
    the sequence keeps no hole."""
    if not messages:
        return PersistResult(0, [], {})
    stored = messages_by_id_txn(cur, [m.msg_id for m in messages])
    todo: list[Message] = []
    seen: set[str] = set()
    for m in messages:
        if m.msg_id not in stored and m.msg_id not in seen:
            seen.add(m.msg_id)
            todo.append(m)
    last_seqs = conversations_txn(cur, list({m.conversation_id for m in todo}), lock=False)
    refused = [m.msg_id for m in todo if m.conversation_id not in last_seqs]
    todo = [m for m in todo if m.conversation_id in last_seqs]
    # Only a seq at or below the conversation's last_seq can be taken.
    used = _taken_txn(cur, [(m.conversation_id, m.seq) for m in todo if m.seq <= last_seqs[m.conversation_id]])
    keep: list[Message] = []
    moved: list[Message] = []
    for m in todo:
        slot = (m.conversation_id, m.seq)
        (moved if slot in used else keep).append(m)
        used.add(slot)
    known = idempotency_many_txn(cur, [(m.sender_id, m.client_msg_id) for m in todo if m.client_msg_id is not None])
    original: dict[str, str] = {}
    for m in todo:
        found = known.get((m.sender_id, m.client_msg_id)) if m.client_msg_id is not None else None
        if found is not None and found[0].msg_id != m.msg_id:
            original[m.msg_id] = found[0].msg_id
    # A retry stored already: it becomes a visible no-op event, at its seq
    # or, when that seq is taken (by the stored copy itself, say), at the
    # end like any moved message; so the acknowledged msg_id always exists
    # and says which message it duplicates.
    def as_duplicate(m: Message) -> Message:
        if m.msg_id not in original:
            return m
        return replace(m, kind=EVENT, body="", client_msg_id=None, data={"name": "duplicate", "of": original[m.msg_id]})

    keep = [as_duplicate(m) for m in keep]
    moved = [as_duplicate(m) for m in moved]
    resequenced = _resequence_txn(cur, keep, moved)
    if not keep:
        return PersistResult(0, refused, resequenced)
    insert_rows(cur, "messages", MSG_COLS, [msg_to_row(m) for m in keep], "msg_id", "message", every=True)
    insert_rows(cur, "idempotency_keys", IDEM_COLS, [
        (m.sender_id, m.client_msg_id, m.conversation_id, m.msg_id, m.seq, m.ts, m.ts + idempotency_window)
        for m in keep if m.client_msg_id is not None
    ], "sender_id, client_msg_id", "idempotency key", every=False)
    _update_conversations_txn(cur, keep)
    return PersistResult(len(keep), refused, resequenced)


def _taken_txn(cur: Cursor, slots: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (conversation, seq) slots among ``slots`` that stored messages
    hold: one range per conversation, one statement per chunk."""
    ranges: dict[str, tuple[int, int]] = {}
    for conv, seq in slots:
        low, high = ranges.get(conv, (seq, seq))
        ranges[conv] = (min(low, seq), max(high, seq))
    wanted = set(slots)
    out: set[tuple[str, int]] = set()
    for part in parts(cur, [(conv, low, high) for conv, (low, high) in sorted(ranges.items())], 3):
        if cur.engine.update_from_values:  # a join with the ranges, as for idempotency keys
            values, args = cur.engine.values_rows(["c", "lo", "hi"], part)
            cur.execute(f"SELECT m.conversation_id, m.seq FROM messages m JOIN {values}"
                        " ON m.conversation_id = v.c AND m.seq BETWEEN v.lo AND v.hi", args)
        else:
            where = " OR ".join(["(conversation_id = ? AND seq BETWEEN ? AND ?)"] * len(part))
            cur.execute(f"SELECT conversation_id, seq FROM messages WHERE {where}", [x for r in part for x in r])
        out.update(slot for slot in ((str(r[0]), int(r[1])) for r in cur.fetchall()) if slot in wanted)
    return out


def _resequence_txn(cur: Cursor, keep: list[Message], moved: list[Message]) -> dict[str, int]:
    """Give each moved message the next seq after everything its
    conversation holds (stored, or kept in this batch) and add it to
    ``keep``; returns the highest seq handed out per conversation. The
    conversations' rows are locked first (as appends do), in id order."""
    if not moved:
        return {}
    ids = sorted({m.conversation_id for m in moved})
    conversations_txn(cur, ids, lock=True)
    top: dict[str, int] = dict.fromkeys(ids, 0)
    for part in parts(cur, ids, 1):
        where, args = cur.engine.in_list("conversation_id", part)
        cur.execute(f"SELECT conversation_id, MAX(seq) FROM messages WHERE {where} GROUP BY conversation_id", args)
        top.update((str(r[0]), int(r[1] or 0)) for r in cur.fetchall())
    for m in keep:
        if m.conversation_id in top:
            top[m.conversation_id] = max(top[m.conversation_id], m.seq)
    resequenced: dict[str, int] = {}
    for m in sorted(moved, key=lambda x: (x.conversation_id, x.seq)):
        top[m.conversation_id] += 1
        keep.append(replace(m, seq=top[m.conversation_id]))
        resequenced[m.conversation_id] = top[m.conversation_id]
    return resequenced


def _update_conversations_txn(cur: Cursor, kept: list[Message]) -> None:
    """Last message per conversation; read positions and unread counts (the
    SQL copy of the session state, used when Redis has lost it), as the
    append transaction keeps them: a participant who sent a message has
    read up to it, and the other participants' texts after it are unread;
    a participant who sent nothing gains the others' texts as unread."""
    by_conv: dict[str, list[Message]] = {}
    for m in kept:
        by_conv.setdefault(m.conversation_id, []).append(m)
    members = members_txn(cur, sorted(by_conv))
    conversations: list[tuple[str, int, str, float]] = []
    participants: list[tuple[str, str, int, int]] = []
    for conv in sorted(by_conv):
        msgs = sorted(by_conv[conv], key=lambda m: m.seq)
        last = msgs[-1]
        conversations.append((conv, last.seq, last.msg_id, last.ts))
        for user, (read_to, unread) in sorted(_reads(msgs, members[conv]).items()):
            participants.append((conv, user, read_to, unread))
    update_rows(cur, "conversations", ("id",), "last_seq = {0}, last_msg_id = {1}, last_ts = {2}", conversations,
                guard="last_seq < {0}")
    # A read position never moves back (a read receipt may have moved it
    # further): there the others' texts are added to the unread count, as
    # for a participant who sent nothing (read_to 0). Added first, while
    # last_read_seq still tells the two cases apart.
    keys = ("conversation_id", "user_id")
    update_rows(cur, "participants", keys, "unread = unread + {1}", [p for p in participants if p[3]],
                guard="last_read_seq >= {0}")
    update_rows(cur, "participants", keys, "last_read_seq = {0}, unread = {1}", [p for p in participants if p[2]],
                guard="last_read_seq < {0}")


def _reads(msgs: list[Message], members: dict[str, Participant]) -> dict[str, tuple[int, int]]:
    """Per participant touched by the messages (in seq order): (the seq of
    their last message or 0, texts of others after it)."""
    reads: dict[str, tuple[int, int]] = {}
    for m in msgs:
        if m.sender_id in members:
            reads[m.sender_id] = (m.seq, 0)
        if m.kind != EVENT:
            for user in members:
                if user != m.sender_id:
                    read_to, unread = reads.get(user, (0, 0))
                    reads[user] = (read_to, unread + 1)
    return reads
