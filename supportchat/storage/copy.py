"""Copy one supportchat database into another (SQLite -> PostgreSQL/MySQL),
so an installation can outgrow the embedded default without losing history,
accounts, the workflow's state, canned responses or profiles.

Both sides are migrated to the latest schema first. Each table is read in
keyset pages from the source and written with an insert-ignore keyed on its
primary key, so an interrupted copy can simply be run again. At the end the
row counts of both sides are compared.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from supportchat.storage.database import Cursor, Database, migrate_blocking
from supportchat.storage.engines import Engine

# (table, columns, primary key columns)
TABLES: list[tuple[str, list[str], list[str]]] = [
    ("conversations",
     ["id", "customer_id", "status", "created_at", "last_seq", "last_msg_id", "last_ts", "closed_at"], ["id"]),
    ("participants",
     ["conversation_id", "user_id", "role", "joined_at", "last_read_seq", "unread"], ["conversation_id", "user_id"]),
    ("messages",
     ["msg_id", "conversation_id", "seq", "sender_id", "sender_role", "client_msg_id", "kind", "body", "data", "ts"],
     ["msg_id"]),
    ("idempotency_keys",
     ["sender_id", "client_msg_id", "conversation_id", "msg_id", "seq", "ts", "expires_at"],
     ["sender_id", "client_msg_id"]),
    ("bot_states", ["conversation_id", "version", "data", "updated_at"], ["conversation_id"]),
    ("teams", ["id", "name", "created_at"], ["id"]),
    ("agents",
     ["id", "login", "name", "role", "team_id", "capacity", "status", "load_count", "disabled", "password_hash",
      "tokens_valid_after", "created_at", "absent_since"], ["id"]),
    ("refresh_tokens", ["token_hash", "agent_id", "expires_at"], ["token_hash"]),
    ("work_items",
     ["conversation_id", "customer_id", "team_id", "state", "agent_id", "queued_at", "assigned_at", "closed_at",
      "rating", "rating_comment", "rated_at"], ["conversation_id"]),
    ("canned_responses",
     ["id", "scope", "owner", "shortcut", "title", "body", "created_by", "created_at", "updated_at"], ["id"]),
    ("attachments",
     ["id", "uploader", "name", "content_type", "size", "sha256", "width", "height", "blob_key", "thumb_key",
      "thumb_type", "scan", "created_at", "conversation_id", "claim", "claimed_at"], ["id"]),
    ("customer_profiles",
     ["customer_id", "name", "email", "attributes", "sensitive_values", "phone_index", "updated_at"],
     ["customer_id"]),
]

# Tables without a primary key, copied per group: the target's rows of a
# group are replaced by the source's (so a second run adds nothing).
GROUPED_TABLES: list[tuple[str, list[str], str, str]] = [
    ("work_notes", ["conversation_id", "author_id", "body", "ts"], "conversation_id", "ts"),
]


class CopyError(Exception):
    pass


def _keyset(keys: list[str]) -> str:
    """WHERE clause for rows after the ``?`` values of ``keys`` (in order)."""
    if len(keys) == 1:
        return f"{keys[0]} > ?"
    a, b = keys
    return f"({a} > ? OR ({a} = ? AND {b} > ?))"


def _keyset_args(after: tuple[Any, ...]) -> tuple[Any, ...]:
    return after if len(after) == 1 else (after[0], after[0], after[1])


def read_page_txn(
    cur: Cursor, table: str, columns: list[str], keys: list[str], after: tuple[Any, ...] | None, limit: int
) -> list[tuple[Any, ...]]:
    sql = f"SELECT {', '.join(columns)} FROM {table}"
    args: tuple[Any, ...] = ()
    if after is not None:
        sql += " WHERE " + _keyset(keys)
        args = _keyset_args(after)
    sql += f" ORDER BY {', '.join(keys)} LIMIT ?"
    cur.execute(sql, (*args, limit))
    return [tuple(r) for r in cur.fetchall()]


def write_rows_txn(cur: Cursor, table: str, columns: list[str], keys: list[str], rows: list[tuple[Any, ...]]) -> None:
    cur.executemany(
        cur.engine.insert_ignore(table, ", ".join(columns), ", ".join("?" * len(columns)), ", ".join(keys)), rows
    )


def read_groups_txn(cur: Cursor, table: str, group: str, after: Any, limit: int) -> list[Any]:
    """The next ``limit`` distinct values of ``group`` after ``after``."""
    sql = f"SELECT DISTINCT {group} FROM {table}"
    args: tuple[Any, ...] = ()
    if after is not None:
        sql += f" WHERE {group} > ?"
        args = (after,)
    cur.execute(sql + f" ORDER BY {group} LIMIT ?", (*args, limit))
    return [r[0] for r in cur.fetchall()]


def read_grouped_txn(
    cur: Cursor, table: str, columns: list[str], group: str, order: str, values: list[Any]
) -> list[tuple[Any, ...]]:
    marks = ", ".join("?" * len(values))
    cur.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {group} IN ({marks}) ORDER BY {group}, {order}",
                values)
    return [tuple(r) for r in cur.fetchall()]


def replace_grouped_txn(
    cur: Cursor, table: str, columns: list[str], group: str, values: list[Any], rows: list[tuple[Any, ...]]
) -> None:
    cur.execute(f"DELETE FROM {table} WHERE {group} IN ({', '.join('?' * len(values))})", values)
    if rows:
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)


def count_txn(cur: Cursor, table: str) -> int:
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    return int(cur.fetchone()[0])


def _now(d: "Deferred[Any]") -> Any:
    """The result of an already-fired Deferred (threadless databases)."""
    out: list[Any] = []
    d.addBoth(out.append)
    if not out:
        raise RuntimeError("expected a synchronous result")
    result = out[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def _compare_counts(src: Database, dst: Database, table: str) -> int:
    """Rows of ``table`` in the target; CopyError if fewer than in the source."""
    have = _now(src.run_interaction("copy_count", count_txn, table))
    now = _now(dst.run_interaction("copy_count", count_txn, table))
    if now < have:
        raise CopyError(f"{table}: the source has {have} rows but the target only {now}")
    return int(now)


def copy_database(
    source: Engine, target: Engine, batch: int = 1000, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of ``source`` into ``target``; returns rows per table
    now in the target. Raises CopyError if the target has fewer rows than
    the source afterwards."""
    migrate_blocking(source)
    migrate_blocking(target)
    src = Database(source, reactor=None, threadless=True)
    dst = Database(target, reactor=None, threadless=True)
    src.start()
    try:
        dst.start()
        try:
            counts: dict[str, int] = {}
            for table, columns, keys in TABLES:
                after: tuple[Any, ...] | None = None
                copied = 0
                while True:
                    rows = _now(src.run_interaction("copy_read", read_page_txn, table, columns, keys, after, batch))
                    if not rows:
                        break
                    _now(dst.run_interaction("copy_write", write_rows_txn, table, columns, keys, rows))
                    copied += len(rows)
                    if progress is not None:
                        progress(table, copied)
                    last = rows[-1]
                    after = tuple(last[columns.index(k)] for k in keys)
                counts[table] = _compare_counts(src, dst, table)
            for table, columns, group, order in GROUPED_TABLES:
                last_group: Any = None
                copied = 0
                while True:
                    values = _now(src.run_interaction("copy_groups", read_groups_txn, table, group, last_group,
                                                      batch))
                    if not values:
                        break
                    rows = _now(src.run_interaction("copy_read", read_grouped_txn, table, columns, group, order,
                                                    values))
                    _now(dst.run_interaction("copy_write", replace_grouped_txn, table, columns, group, values, rows))
                    copied += len(rows)
                    if progress is not None:
                        progress(table, copied)
                    last_group = values[-1]
                counts[table] = _compare_counts(src, dst, table)
            return counts
        finally:
            dst.close()
    finally:
        src.close()
