"""Set-based SQL shared by the batch writers (pool thread only): the group
commit's append transaction (storage/append.py) and the Redis persister's
flush (storage/persist.py).

A batch costs a fixed handful of statements whatever its size: reads of
many keys in one ``IN (...)`` or ``OR`` list, multi-row INSERTs and one
``UPDATE ... FROM (VALUES ...)`` per table where the engine has it (SQLite,
PostgreSQL; MySQL updates row by row). Every statement stays under
:data:`MAX_PARAMS` bound parameters; longer lists are cut into chunks.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

from supportchat.storage.database import Cursor, RowSkipped
from supportchat.storage.models import IdempotencyRecord, Message, Participant
from supportchat.storage.rows import MSG_COLS, msg_from_row, placeholders

# Bound parameters per statement: SQLite before 3.32 allowed 999; MySQL and
# PostgreSQL allow far more. Every chunk below stays under this.
MAX_PARAMS = 990

# ``{0}``, ``{1}``... in the assignments and guards of update_rows.
_SLOT = re.compile(r"\{(\d+)\}")


# Rows per statement where rows travel as arrays (Engine.array_rows).
ARRAY_ROWS = 5000


def chunks(items: Sequence[Any], per_row: int) -> Iterator[Sequence[Any]]:
    """Slices of ``items`` whose parameters (``per_row`` each) fit one statement."""
    size = max(1, MAX_PARAMS // per_row)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def parts(cur: Cursor, items: Sequence[Any], per_row: int) -> Iterator[Sequence[Any]]:
    """``chunks``, or larger slices where rows travel as arrays."""
    if cur.engine.array_rows:
        for i in range(0, len(items), ARRAY_ROWS):
            yield items[i:i + ARRAY_ROWS]
    else:
        yield from chunks(items, per_row)


def rows_placeholders(columns: int, rows: int) -> str:
    """``?, ?), (?, ?`` for the ``VALUES ({...})`` of a multi-row insert."""
    one = placeholders(columns)
    return "), (".join([one] * rows)


def insert_rows(cur: Cursor, table: str, columns: str, rows: list[tuple[Any, ...]], key: str, what: str,
                every: bool) -> None:
    """Multi-row insert-ignore; with ``every``, a skipped row raises RowSkipped."""
    width = columns.count(",") + 1
    for part in parts(cur, rows, width):
        if cur.engine.array_rows:
            values, args = cur.engine.values_rows([f"c{i}" for i in range(width)], part)
            cur.execute(cur.engine.insert_ignore_select(table, columns, f"SELECT * FROM {values}", key), args)
        else:
            sql = cur.engine.insert_ignore(table, columns, rows_placeholders(width, len(part)), key)
            cur.execute(sql, [v for row in part for v in row])
        if every and cur.rowcount != len(part):
            raise RowSkipped(f"{len(part) - cur.rowcount} of {len(part)} {what} rows clashed with another writer")


def update_rows(cur: Cursor, table: str, keys: tuple[str, ...], assignments: str, rows: list[tuple[Any, ...]],
                guard: str = "") -> None:
    """UPDATE one row per tuple ``(*keys, *values)``; ``assignments`` names
    the values ``{0}``, ``{1}``... (e.g. ``"unread = unread + {0}"``), and
    so may ``guard``, a condition the row must also meet (e.g.
    ``"last_seq < {0}"``); a value may be named more than once. Engines
    that can (SQLite 3.33+, PostgreSQL, MySQL) do it in one statement per
    chunk, ``UPDATE ... FROM (VALUES ...)`` (a multi-table ``UPDATE ...
    JOIN`` on MySQL); the others one statement per row. Portable
    assignments read only the values and the column they assign: MySQL
    runs a multi-table UPDATE's assignments in no set order."""
    if not rows:
        return
    nkeys = len(keys)
    nvalues = len(rows[0]) - nkeys
    width = len(rows[0])
    if cur.engine.update_from_values:
        names = [f"k{i}" for i in range(nkeys)] + [f"v{i}" for i in range(nvalues)]
        values = [f"v.v{i}" for i in range(nvalues)]
        sets = assignments.format(*values)
        where = " AND ".join(f"{table}.{k} = v.k{i}" for i, k in enumerate(keys))
        if guard:
            where += f" AND {guard.format(*values)}"
        for part in parts(cur, rows, width):
            values_sql, args = cur.engine.values_rows(names, part)
            cur.execute(cur.engine.update_values(table, sets, values_sql, where), args)
        return
    set_slots = [int(i) for i in _SLOT.findall(assignments)]
    guard_slots = [int(i) for i in _SLOT.findall(guard)]
    where = " AND ".join(f"{k} = ?" for k in keys)
    if guard:
        where += f" AND {_SLOT.sub('?', guard)}"
    cur.executemany(
        f"UPDATE {table} SET {_SLOT.sub('?', assignments)} WHERE {where}",
        [tuple(row[nkeys + i] for i in set_slots) + tuple(row[:nkeys]) + tuple(row[nkeys + i] for i in guard_slots)
         for row in rows],
    )


def conversations_txn(cur: Cursor, ids: list[str], lock: bool) -> dict[str, int]:
    """last_seq of each existing conversation; with ``lock``, the rows are
    locked (``FOR UPDATE``) in id order, so two batches cannot deadlock."""
    out: dict[str, int] = {}
    for part in parts(cur, sorted(ids), 1):
        where, args = cur.engine.in_list("id", part)
        cur.execute(f"SELECT id, last_seq FROM conversations WHERE {where} ORDER BY id"
                    + (cur.engine.for_update() if lock else ""), args)
        out.update((str(r[0]), int(r[1])) for r in cur.fetchall())
    return out


def members_txn(cur: Cursor, ids: list[str]) -> dict[str, dict[str, Participant]]:
    """Each conversation's participants, in the order they joined."""
    out: dict[str, dict[str, Participant]] = {i: {} for i in ids}
    for part in parts(cur, ids, 1):
        where, args = cur.engine.in_list("conversation_id", part)
        cur.execute("SELECT conversation_id, user_id, role FROM participants"
                    f" WHERE {where} ORDER BY conversation_id, joined_at, user_id", args)
        for conv, user, role in cur.fetchall():
            out[str(conv)][str(user)] = Participant(user, role)
    return out


def messages_by_id_txn(cur: Cursor, msg_ids: list[str]) -> dict[str, Message]:
    """The stored messages among ``msg_ids``."""
    out: dict[str, Message] = {}
    for part in parts(cur, msg_ids, 1):
        where, args = cur.engine.in_list("msg_id", part)
        cur.execute(f"SELECT {MSG_COLS} FROM messages WHERE {where}", args)
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
    cols = "k.sender_id, k.client_msg_id, k.conversation_id, k.msg_id, k.seq, k.ts, k.expires_at"
    for part in parts(cur, sorted(set(keys)), 2):
        if cur.engine.update_from_values:
            # A join with the pairs: PostgreSQL plans a long OR list slowly
            # (60 ms for 500 pairs).
            values, args = cur.engine.values_rows(["s", "c"], part)
            cur.execute(f"SELECT {cols} FROM idempotency_keys k JOIN {values}"
                        " ON k.sender_id = v.s AND k.client_msg_id = v.c", args)
        else:
            where = " OR ".join(["(k.sender_id = ? AND k.client_msg_id = ?)"] * len(part))
            cur.execute(f"SELECT {cols} FROM idempotency_keys k WHERE {where}", [x for pair in part for x in pair])
        for r in cur.fetchall():
            out[(str(r[0]), str(r[1]))] = (IdempotencyRecord(r[2], r[3], int(r[4]), float(r[5])), float(r[6]))
    return out
