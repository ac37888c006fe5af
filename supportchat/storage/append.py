"""The group-commit append transaction, set-based (pool thread only).

One batch of :class:`AppendRequest` (every conversation in it) costs a
fixed handful of statements, whatever its size: one read each for the
conversations' rows (locked), their participants, msg_ids already stored
and idempotency keys; then multi-row INSERTs and UPDATEs. The first
version ran about nine statements per conversation; each statement is a
trip out of Python into SQLite and back, and every return has to win the
interpreter lock back from the busy reactor thread, which is what made a
saturated batch of 512 messages take 130-380 ms (docs/benchmarks.md,
issue 13).

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

import json
from typing import Any, Iterator, Sequence

from supportchat.storage.database import Cursor, RowSkipped
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
from supportchat.storage.rows import MSG_COLS, get_message_txn, msg_from_row, participants_txn, placeholders

# Bound parameters per statement: SQLite before 3.32 allowed 999; MySQL and
# PostgreSQL allow far more. Every chunk below stays under this.
MAX_PARAMS = 990

_IDEM_COLS = "sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at"


def chunks(items: Sequence[Any], per_row: int) -> Iterator[Sequence[Any]]:
    """Slices of ``items`` whose parameters (``per_row`` each) fit one statement."""
    size = max(1, MAX_PARAMS // per_row)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def rows_placeholders(columns: int, rows: int) -> str:
    """``?, ?), (?, ?`` for the ``VALUES ({...})`` of a multi-row insert."""
    one = placeholders(columns)
    return "), (".join([one] * rows)


def insert_rows(cur: Cursor, table: str, columns: str, rows: list[tuple[Any, ...]], key: str, what: str,
                every: bool) -> None:
    """Multi-row insert-ignore; with ``every``, a skipped row raises RowSkipped."""
    width = columns.count(",") + 1
    for part in chunks(rows, width):
        sql = cur.engine.insert_ignore(table, columns, rows_placeholders(width, len(part)), key)
        cur.execute(sql, [v for row in part for v in row])
        if every and cur.rowcount != len(part):
            raise RowSkipped(f"{len(part) - cur.rowcount} of {len(part)} {what} rows clashed with another writer")


def update_rows(cur: Cursor, table: str, keys: tuple[str, ...], assignments: str, rows: list[tuple[Any, ...]]) -> None:
    """UPDATE one row per tuple ``(*keys, *values)``; ``assignments`` names
    the values ``{0}``, ``{1}``... (e.g. ``"unread = unread + {0}"``).
    Engines that can (SQLite, PostgreSQL) do it in one statement per chunk,
    ``UPDATE ... FROM (VALUES ...)``; the others one statement per row."""
    if not rows:
        return
    nvalues = len(rows[0]) - len(keys)
    width = len(rows[0])
    if cur.engine.update_from_values:
        names = [f"k{i}" for i in range(len(keys))] + [f"v{i}" for i in range(nvalues)]
        sets = assignments.format(*(f"v.v{i}" for i in range(nvalues)))
        where = " AND ".join(f"{table}.{k} = v.k{i}" for i, k in enumerate(keys))
        for part in chunks(rows, width):
            values = cur.engine.values_table(names, len(part))
            cur.execute(f"UPDATE {table} SET {sets} FROM {values} WHERE {where}", [x for row in part for x in row])
        return
    sets = assignments.format(*(["?"] * nvalues))
    where = " AND ".join(f"{k} = ?" for k in keys)
    cur.executemany(f"UPDATE {table} SET {sets} WHERE {where}",
                    [tuple(row[len(keys):]) + tuple(row[:len(keys)]) for row in rows])


def _conversations_txn(cur: Cursor, ids: list[str]) -> dict[str, int]:
    """last_seq of each existing conversation, rows locked in id order."""
    out: dict[str, int] = {}
    for part in chunks(ids, 1):
        cur.execute(
            f"SELECT id, last_seq FROM conversations WHERE id IN ({placeholders(len(part))}) ORDER BY id"
            + cur.engine.for_update(),
            list(part),
        )
        out.update((str(r[0]), int(r[1])) for r in cur.fetchall())
    return out


def _members_txn(cur: Cursor, ids: list[str]) -> dict[str, dict[str, Participant]]:
    out: dict[str, dict[str, Participant]] = {i: {} for i in ids}
    for part in chunks(ids, 1):
        cur.execute(
            "SELECT conversation_id, user_id, role FROM participants"
            f" WHERE conversation_id IN ({placeholders(len(part))}) ORDER BY conversation_id, joined_at, user_id",
            list(part),
        )
        for conv, user, role in cur.fetchall():
            out[str(conv)][str(user)] = Participant(user, role)
    return out


def messages_by_id_txn(cur: Cursor, msg_ids: list[str]) -> dict[str, Message]:
    out: dict[str, Message] = {}
    for part in chunks(msg_ids, 1):
        cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE msg_id IN ({placeholders(len(part))})", list(part))
        for row in cur.fetchall():
            m = msg_from_row(row)
            out[m.msg_id] = m
    return out


def idempotency_many_txn(
    cur: Cursor, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[IdempotencyRecord, float]]:
    """Stored idempotency records (live or expired) for (sender, client_msg_id)
    pairs: one statement per chunk, each pair an index lookup on the key."""
    out: dict[tuple[str, str], tuple[IdempotencyRecord, float]] = {}
    for part in chunks(sorted(set(keys)), 2):
        where = " OR ".join(["(sender_id = ? AND client_msg_id = ?)"] * len(part))
        cur.execute(
            "SELECT sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at FROM idempotency_keys"
            f" WHERE {where}",
            [x for pair in part for x in pair],
        )
        for r in cur.fetchall():
            out[(str(r[0]), str(r[1]))] = (IdempotencyRecord(r[2], r[3], int(r[4]), float(r[5])), float(r[6]))
    return out


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
            insert_rows(cur, "idempotency_keys", _IDEM_COLS, self.idempotency, "sender_id, client_msg_id",
                        "idempotency key", every=False)


def append_batch_txn(cur: Cursor, requests: list[AppendRequest]) -> list[AppendResult | Exception]:
    """Append a batch in one transaction. A refused request (StoreError)
    refuses alone: it is checked before anything is written."""
    results: list[AppendResult | Exception | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(req.conversation_id, []).append(i)
    ids = sorted(groups)
    last_seqs = _conversations_txn(cur, ids)
    members = _members_txn(cur, [i for i in ids if i in last_seqs])
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
        writes.messages.append((
            msg.conversation_id, msg.msg_id, msg.seq, msg.sender_id, msg.sender_role, msg.client_msg_id,
            msg.kind, msg.body, msg.ts, None if msg.data is None else json.dumps(msg.data),
        ))
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
