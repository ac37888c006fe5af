"""The group-commit append transaction, set-based (pool thread only).

One batch of :class:`AppendRequest` (every conversation in it) costs a
fixed handful of statements, whatever its size: one read each for the
conversations' rows (locked), their participants, msg_ids already stored
and idempotency keys; then multi-row INSERTs and UPDATEs. The first
version ran about nine statements per conversation; each statement is a
trip out of Python into SQLite and back, and every return has to win the
interpreter lock back from the busy reactor thread, which is what made a
saturated batch of 512 messages take 130-380 ms (docs/benchmarks.md,
issue 13). The set-based statements themselves live in storage/bulk.py,
shared with the Redis persister's flush (storage/persist.py).

Seq safety with several writers (PostgreSQL, MySQL: other nodes, other pool
threads): the conversations' rows are read with ``SELECT ... ORDER BY id
FOR UPDATE`` before anything else about them, so a second transaction
appending to one of them waits there until the first commits or rolls back,
then reads the committed ``last_seq`` (both engines run at READ COMMITTED,
so the statements after the lock see that commit too: participants,
idempotency keys). ``last_seq + 1`` is therefore always the next free seq,
and the unique index on (conversation_id, seq) would turn any mistake into
an error, never a gap or a duplicate. Rows are locked in id order, so two
batches cannot deadlock each other. SQLite has a single writer connection,
which serialises the same way.

Retries: every request carries a ``msg_id`` chosen before the first
attempt. A message whose msg_id is already stored (the connection dropped
after a commit the caller never heard of) is returned as stored, and rows go
in with an insert-ignore keyed on msg_id, so a retried batch never stores a
message twice; a row the insert skipped although it was checked to be new
raises :class:`RowSkipped` (another writer took its seq): the transaction
is retried rather than acknowledged.
"""

from __future__ import annotations

from typing import Any

from supportchat.storage.bulk import (
    conversations_txn,
    idempotency_many_txn,
    insert_rows,
    members_txn,
    messages_by_id_txn,
    update_rows,
)
from supportchat.storage.database import Cursor
from supportchat.storage.models import (
    EVENT,
    AppendRequest,
    AppendResult,
    Conflict,
    IdempotencyRecord,
    Message,
    NotFound,
    Participant,
    new_id,
)
from supportchat.storage.rows import IDEM_COLS, MSG_COLS, get_message_txn, msg_to_row, participants_txn


class _Writes:
    """Everything a batch writes, gathered while deciding, written at the end."""

    def __init__(self) -> None:
        self.joins: list[tuple[Any, ...]] = []
        self.messages: list[tuple[Any, ...]] = []
        self.idempotency: list[tuple[Any, ...]] = []
        self.expired: list[tuple[Any, ...]] = []
        self.conversations: list[tuple[Any, ...]] = []
        self.read_to: list[tuple[Any, ...]] = []
        self.unread_add: list[tuple[Any, ...]] = []

    def write(self, cur: Cursor) -> None:
        if self.joins:
            insert_rows(cur, "participants", "conversation_id, user_id, role, joined_at, last_read_seq, unread",
                        self.joins, "conversation_id, user_id", "participant", every=True)
        if self.messages:
            insert_rows(cur, "messages", MSG_COLS, self.messages, "msg_id", "message", every=True)
        update_rows(cur, "conversations", ("id",), "last_seq = {0}, last_msg_id = {1}, last_ts = {2}",
                    self.conversations)
        update_rows(cur, "participants", ("conversation_id", "user_id"), "last_read_seq = {0}, unread = {1}",
                    self.read_to)
        update_rows(cur, "participants", ("conversation_id", "user_id"), "unread = unread + {0}", self.unread_add)
        if self.expired:
            cur.executemany(
                "DELETE FROM idempotency_keys WHERE sender_id = ? AND client_msg_id = ? AND expires_at <= ?",
                self.expired,
            )
        if self.idempotency:
            insert_rows(cur, "idempotency_keys", IDEM_COLS, self.idempotency, "sender_id, client_msg_id",
                        "idempotency key", every=False)


def append_batch_txn(cur: Cursor, requests: list[AppendRequest]) -> list[AppendResult | Exception]:
    """Append a batch in one transaction. A refused request (StoreError)
    refuses alone: it is checked before anything is written."""
    results: list[AppendResult | Exception | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(req.conversation_id, []).append(i)
    ids = sorted(groups)
    last_seqs = conversations_txn(cur, ids, lock=True)
    members = members_txn(cur, [i for i in ids if i in last_seqs])
    stored = messages_by_id_txn(cur, [r.msg_id for r in requests if r.msg_id is not None])
    known = idempotency_many_txn(cur, [
        (r.sender_id, r.client_msg_id) for r in requests
        if r.client_msg_id is not None and r.msg_id not in stored
    ])
    batch_keys: dict[tuple[str, str], Message] = {}
    writes = _Writes()
    for conversation_id in ids:
        items = [(i, requests[i]) for i in groups[conversation_id]]
        if conversation_id not in last_seqs:
            for i, _ in items:
                results[i] = NotFound("no such conversation")
            continue
        _decide_group(cur, conversation_id, last_seqs[conversation_id], members[conversation_id], items, stored,
                      known, batch_keys, results, writes)
    writes.write(cur)
    out: list[AppendResult | Exception] = []
    for r in results:
        assert r is not None
        out.append(r)
    return out


def _decide_group(
    cur: Cursor,
    conversation_id: str,
    last_seq: int,
    members: dict[str, Participant],
    items: list[tuple[int, AppendRequest]],
    stored: dict[str, Message],
    known: dict[tuple[str, str], tuple[IdempotencyRecord, float]],
    batch_keys: dict[tuple[str, str], Message],
    results: list[AppendResult | Exception | None],
    writes: _Writes,
) -> None:
    """One conversation's requests, in order: results, and the rows to write."""
    # Per participant: ("add", k) -> unread += k; ("set", seq, k) -> read up to seq, unread = k.
    reads: dict[str, tuple[Any, ...]] = {}
    last: Message | None = None
    for i, req in items:
        if req.msg_id is not None and req.msg_id in stored:
            done = stored[req.msg_id]
            if done.client_msg_id is not None:
                batch_keys[(done.sender_id, done.client_msg_id)] = done
            results[i] = AppendResult(message=done, duplicate=False, participants=tuple(members.values()))
            continue
        if req.client_msg_id is not None:
            key = (req.sender_id, req.client_msg_id)
            if key in batch_keys:
                results[i] = AppendResult(message=batch_keys[key], duplicate=True,
                                          participants=tuple(members.values()))
                continue
            found = known.get(key)
            if found is not None and found[1] > req.ts:
                prior = found[0]
                results[i] = AppendResult(
                    message=get_message_txn(cur, prior.conversation_id, prior.seq),
                    duplicate=True,
                    participants=tuple(participants_txn(cur, prior.conversation_id)),
                )
                continue
            if found is not None:
                writes.expired.append((req.sender_id, req.client_msg_id, req.ts))
        present = req.sender_id in members
        if req.join and present:
            results[i] = Conflict("already a participant")
            continue
        if not req.join and req.require_participant and not present:
            results[i] = NotFound("no such conversation")
            continue
        if req.join:
            writes.joins.append((conversation_id, req.sender_id, req.sender_role, req.ts, 0, 0))
            members[req.sender_id] = Participant(req.sender_id, req.sender_role)
        last_seq = max(last_seq, req.seq_floor) + 1
        msg = Message(
            conversation_id=conversation_id, msg_id=req.msg_id or new_id("m", req.ts), seq=last_seq,
            sender_id=req.sender_id, sender_role=req.sender_role, client_msg_id=req.client_msg_id,
            kind=req.kind, body=req.body, ts=req.ts, data=req.data,
        )
        writes.messages.append(msg_to_row(msg))
        if req.sender_id in members:
            reads[req.sender_id] = ("set", msg.seq, 0)
        if req.kind != EVENT:
            for uid in members:
                if uid == req.sender_id:
                    continue
                state = reads.get(uid, ("add", 0))
                reads[uid] = state[:-1] + (state[-1] + 1,)
        if req.client_msg_id is not None:
            batch_keys[(req.sender_id, req.client_msg_id)] = msg
            writes.idempotency.append((
                req.sender_id, req.client_msg_id, conversation_id, msg.msg_id, msg.seq, msg.ts,
                req.ts + req.idempotency_window,
            ))
        last = msg
        results[i] = AppendResult(message=msg, duplicate=False, participants=tuple(members.values()))
    if last is None:
        return
    writes.conversations.append((conversation_id, last.seq, last.msg_id, last.ts))
    for uid, state in reads.items():
        if state[0] == "set":
            writes.read_to.append((conversation_id, uid, state[1], state[2]))
        elif state[1]:
            writes.unread_add.append((conversation_id, uid, state[1]))
