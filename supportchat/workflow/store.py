"""The workflow store seam and its SQL implementation.

Atomicity: every transaction that changes who works on what (assignment,
take, transfer, close, reopen, status, capacity, disabling) first locks
the single ``workflow_lock`` row by writing to it (a row lock held to
commit on PostgreSQL and MariaDB; on SQLite the database write lock, which
also serialises gateway processes sharing the file). All gateway nodes share the SQL database in both modes, so these
decisions are serialised cluster-wide and each one reads the committed
result of the one before it: an agent's ``load_count`` and a conversation's
``state`` cannot be read stale, so no agent goes over capacity through
automatic assignment and no conversation is assigned twice.
"""

from __future__ import annotations

import uuid

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from supportchat.storage.database import Cursor, Database
from supportchat.storage.outbox import add_outbox_txn
from supportchat.workflow.models import (
    ASSIGNED,
    BOT,
    CLOSED,
    QUEUED,
    Agent,
    Assignment,
    Note,
    Team,
    WorkflowError,
    WorkItem,
    pick_assignments,
)

AGENT_FIELDS = ("name", "role", "team_id", "capacity", "disabled", "password_hash")


class WorkflowStore(Protocol):
    """Accounts, teams, status/capacity, the queue and ratings."""

    # accounts and teams
    def create_team(self, team_id: str, name: str, now: float) -> "Deferred[Team]": ...
    def list_teams(self) -> "Deferred[list[Team]]": ...
    def rename_team(self, team_id: str, name: str) -> "Deferred[Team | None]": ...
    def create_agent(self, agent: Agent) -> "Deferred[Agent]":
        """WorkflowError(conflict) when the id or login is taken."""
    def get_agent(self, agent_id: str) -> "Deferred[Agent | None]": ...
    def get_agent_by_login(self, login: str) -> "Deferred[Agent | None]": ...
    def list_agents(self) -> "Deferred[list[Agent]]": ...
    def ensure_agent(self, agent_id: str, role: str, name: str, capacity: int, now: float) -> "Deferred[Agent]":
        """The account, created (no password) for a token-only agent."""
    def update_agent(self, agent_id: str, changes: dict[str, Any], now: float) -> "Deferred[tuple[Agent | None, list[str]]]":
        """Apply ``changes`` (AGENT_FIELDS). Disabling also sets status
        offline, revokes tokens issued until ``now`` and refresh tokens, and
        puts the agent's conversations back in the queue (their ids are
        returned)."""
    def save_refresh(self, token_hash: str, agent_id: str, expires_at: float) -> "Deferred[None]": ...
    def use_refresh(self, token_hash: str, now: float) -> "Deferred[str | None]":
        """The agent id of a live refresh token, which is spent (one use)."""

    # status and queue
    def set_status(self, agent_id: str, status: str) -> "Deferred[Agent | None]": ...
    def watched_agents(self) -> "Deferred[list[tuple[Agent, float]]]":
        """Enabled agents who are not offline or still have conversations,
        each with since when they have been connected nowhere (0: not
        known to be gone)."""
    def mark_absent(self, agent_id: str, since: float) -> "Deferred[None]":
        """Record that the agent is connected nowhere since ``since`` (the
        first record wins); ``since`` 0 clears it (they are back)."""
    def requeue_absent(self, now: float, absent_for: float, agent_ids: list[str]) -> "Deferred[list[tuple[str, str]]]":
        """The conversations of those of ``agent_ids`` recorded absent since
        ``now - absent_for`` or earlier go back to the queue, keeping their
        place (their first queue time); returns (conversation, agent)."""
    def enqueue(
        self, conversation_id: str, customer_id: str, team_id: str, now: float, state: str = QUEUED
    ) -> "Deferred[WorkItem]":
        """Queue a conversation (no change if it already has a place); with
        ``state`` BOT it is held for the bot, outside the queue."""
    def handoff(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        """The bot handed off: a conversation held for the bot enters its
        team's queue (queued at ``now``). None if it was not with the bot
        (already handed off, taken, closed or unknown): idempotent."""
    def assign_next(self, now: float, limit: int) -> "Deferred[list[Assignment]]":
        """Assign queued conversations, oldest first, each to the least busy
        online agent of its team below capacity; atomic across nodes."""
    def take(self, conversation_id: str, customer_id: str, agent_id: str, now: float) -> "Deferred[Assignment | None]":
        """Assign to ``agent_id`` by hand (capacity is not checked: the agent
        chose it). None if it already is theirs; WorkflowError if it is
        someone else's or closed."""
    def transfer(
        self, conversation_id: str, to_agent: str | None, to_team: str | None, author_id: str, note: str | None,
        now: float, note_after_seq: int = 0,
    ) -> "Deferred[tuple[WorkItem, WorkItem]]":
        """To an agent (assigned at once, if enabled and below capacity) or to
        a team's queue; returns (before, after). The note is stored in the
        same transaction, placed after ``note_after_seq``."""
    def close(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        """Close; returns the item as it was (None if unknown or already closed)."""
    def reopen(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        """Queue a closed conversation again (None if it is not closed)."""
    def rate(self, conversation_id: str, rating: int, comment: str | None, now: float) -> "Deferred[bool]":
        """Store the customer's rating of a closed conversation."""
    def get_item(self, conversation_id: str) -> "Deferred[WorkItem | None]": ...
    def serves_customer(self, customer_id: str, team_id: str, agent_id: str) -> "Deferred[bool]":
        """Has the customer a conversation in ``team_id``'s inbox or assigned
        to ``agent_id``? (Whose profile an agent may read.)"""
    def list_items(
        self, state: str | None, agent_id: str | None, team_id: str | None, limit: int,
        queued_before: float | None = None, unread_only: bool = False,
    ) -> "Deferred[list[WorkItem]]":
        """Oldest first. ``queued_before``: only queued items waiting since
        before then; ``unread_only``: only items whose assigned agent has
        unread messages."""
    def agent_unread(self, conversation_ids: list[str]) -> "Deferred[dict[str, int]]":
        """Unread messages of each conversation's assigned agent (the
        conversations with one)."""
    def notes(self, conversation_id: str, after_seq: int = -1) -> "Deferred[list[Note]]":
        """The conversation's internal notes placed after a message above
        ``after_seq`` (all by default), in conversation order."""
    def add_note(self, conversation_id: str, author_id: str, body: str, now: float,
                 after_seq: int) -> "Deferred[Note]":
        """Store an internal note placed after message ``after_seq``."""
    def csat_report(self, since: float) -> "Deferred[dict[str, Any]]": ...


# -- transaction functions -------------------------------------------------

_AGENT_COLS = ("id, login, name, role, team_id, capacity, status, load_count, disabled, password_hash,"
               " tokens_valid_after, created_at")
_ITEM_COLS = ("conversation_id, customer_id, team_id, state, agent_id, queued_at, assigned_at, closed_at,"
              " rating, rating_comment")


def _agent(r: Any) -> Agent:
    return Agent(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], int(r[7]), bool(r[8]), r[9], float(r[10]),
                 float(r[11]))


def _item(r: Any) -> WorkItem:
    return WorkItem(r[0], r[1], r[2], r[3], r[4], float(r[5]), None if r[6] is None else float(r[6]),
                    None if r[7] is None else float(r[7]), None if r[8] is None else int(r[8]), r[9])


def _lock_txn(cur: Cursor) -> None:
    """Take the workflow lock: a write to the one lock row. PostgreSQL and
    MariaDB hold its row lock until commit; on SQLite it is the first
    statement of the transaction and takes the database write lock (the
    Python driver opens the transaction only at a write, so a plain SELECT
    would not lock anything between processes sharing the file)."""
    cur.execute("UPDATE workflow_lock SET id = 1 WHERE id = 1")


def _create_team_txn(cur: Cursor, team_id: str, name: str, now: float) -> Team:
    cur.execute("SELECT 1 FROM teams WHERE id = ?", (team_id,))
    if cur.fetchone() is not None:
        raise WorkflowError("a team with this id exists")
    cur.execute("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)", (team_id, name, now))
    return Team(team_id, name, now)


def _list_teams_txn(cur: Cursor) -> list[Team]:
    cur.execute("SELECT id, name, created_at FROM teams ORDER BY id")
    return [Team(r[0], r[1], float(r[2])) for r in cur.fetchall()]


def _rename_team_txn(cur: Cursor, team_id: str, name: str) -> Team | None:
    cur.execute("UPDATE teams SET name = ? WHERE id = ?", (name, team_id))
    cur.execute("SELECT id, name, created_at FROM teams WHERE id = ?", (team_id,))
    r = cur.fetchone()
    return None if r is None else Team(r[0], r[1], float(r[2]))


def _get_agent_txn(cur: Cursor, agent_id: str) -> Agent | None:
    cur.execute(f"SELECT {_AGENT_COLS} FROM agents WHERE id = ?", (agent_id,))
    r = cur.fetchone()
    return None if r is None else _agent(r)


def _get_agent_by_login_txn(cur: Cursor, login: str) -> Agent | None:
    cur.execute(f"SELECT {_AGENT_COLS} FROM agents WHERE login = ?", (login,))
    r = cur.fetchone()
    return None if r is None else _agent(r)


def _insert_agent(cur: Cursor, a: Agent) -> None:
    cur.execute(
        f"INSERT INTO agents ({_AGENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (a.id, a.login, a.name, a.role, a.team_id, a.capacity, a.status, a.load, int(a.disabled),
         a.password_hash, a.tokens_valid_after, a.created_at),
    )


def _create_agent_txn(cur: Cursor, agent: Agent) -> Agent:
    cur.execute("SELECT 1 FROM agents WHERE id = ? OR login = ?", (agent.id, agent.login))
    if cur.fetchone() is not None:
        raise WorkflowError("an account with this id or login exists")
    _insert_agent(cur, agent)
    return agent


def _list_agents_txn(cur: Cursor) -> list[Agent]:
    cur.execute(f"SELECT {_AGENT_COLS} FROM agents ORDER BY id")
    return [_agent(r) for r in cur.fetchall()]


def _ensure_agent_txn(cur: Cursor, agent_id: str, role: str, name: str, capacity: int, now: float) -> Agent:
    found = _get_agent_txn(cur, agent_id)
    if found is not None:
        return found
    _lock_txn(cur)  # two first connections of the same agent: one insert
    found = _get_agent_txn(cur, agent_id)
    if found is not None:
        return found
    login = agent_id
    cur.execute("SELECT 1 FROM agents WHERE login = ?", (login,))
    if cur.fetchone() is not None:
        login = f"{agent_id}#token"
    agent = Agent(agent_id, login, name, role, capacity=capacity, created_at=now)
    _insert_agent(cur, agent)
    return agent


def _requeue_agent_txn(cur: Cursor, agent_id: str, now: float) -> list[str]:
    cur.execute("SELECT conversation_id FROM work_items WHERE agent_id = ? AND state = ?", (agent_id, ASSIGNED))
    ids = sorted(r[0] for r in cur.fetchall())
    if ids:
        cur.execute(
            "UPDATE work_items SET state = ?, agent_id = NULL, assigned_at = NULL WHERE agent_id = ? AND state = ?",
            (QUEUED, agent_id, ASSIGNED),
        )
    cur.execute("UPDATE agents SET load_count = 0 WHERE id = ?", (agent_id,))
    return ids


def _update_agent_txn(cur: Cursor, agent_id: str, changes: dict[str, Any], now: float) -> tuple[Agent | None, list[str]]:
    _lock_txn(cur)
    before = _get_agent_txn(cur, agent_id)
    if before is None:
        return None, []
    sets = [(k, v) for k, v in changes.items() if k in AGENT_FIELDS]
    for key, value in sets:
        cur.execute(f"UPDATE agents SET {key} = ? WHERE id = ?", (int(value) if key == "disabled" else value, agent_id))
    requeued: list[str] = []
    if changes.get("disabled") and not before.disabled:
        cur.execute("UPDATE agents SET status = 'offline', tokens_valid_after = ? WHERE id = ?", (now, agent_id))
        cur.execute("DELETE FROM refresh_tokens WHERE agent_id = ?", (agent_id,))
        requeued = _requeue_agent_txn(cur, agent_id, now)
    return _get_agent_txn(cur, agent_id), requeued


def _save_refresh_txn(cur: Cursor, token_hash: str, agent_id: str, expires_at: float) -> None:
    cur.execute("INSERT INTO refresh_tokens (token_hash, agent_id, expires_at) VALUES (?, ?, ?)",
                (token_hash, agent_id, expires_at))


def _use_refresh_txn(cur: Cursor, token_hash: str, now: float) -> str | None:
    cur.execute("SELECT agent_id, expires_at FROM refresh_tokens WHERE token_hash = ?" + cur.engine.for_update(),
                (token_hash,))
    r = cur.fetchone()
    if r is None:
        return None
    cur.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (token_hash,))
    return str(r[0]) if float(r[1]) > now else None


def _set_status_txn(cur: Cursor, agent_id: str, status: str) -> Agent | None:
    _lock_txn(cur)
    cur.execute("UPDATE agents SET status = ? WHERE id = ? AND disabled = 0", (status, agent_id))
    return _get_agent_txn(cur, agent_id)


def _watched_agents_txn(cur: Cursor) -> list[tuple[Agent, float]]:
    cur.execute(f"SELECT {_AGENT_COLS}, absent_since FROM agents"
                " WHERE disabled = 0 AND (status <> 'offline' OR load_count > 0) ORDER BY id")
    return [(_agent(r), float(r[-1])) for r in cur.fetchall()]


def _mark_absent_txn(cur: Cursor, agent_id: str, since: float) -> None:
    if since:
        cur.execute("UPDATE agents SET absent_since = ? WHERE id = ? AND absent_since = 0", (since, agent_id))
    else:
        cur.execute("UPDATE agents SET absent_since = 0 WHERE id = ? AND absent_since <> 0", (agent_id,))


def _requeue_absent_txn(cur: Cursor, now: float, absent_for: float, agent_ids: list[str]) -> list[tuple[str, str]]:
    _lock_txn(cur)
    cur.execute("SELECT id FROM agents WHERE load_count > 0 AND absent_since > 0 AND absent_since <= ? ORDER BY id",
                (now - absent_for,))
    out: list[tuple[str, str]] = []
    for agent_id in [str(r[0]) for r in cur.fetchall() if str(r[0]) in agent_ids]:
        out.extend((conv, agent_id) for conv in _requeue_agent_txn(cur, agent_id, now))
    return out


def _get_item_txn(cur: Cursor, conversation_id: str) -> WorkItem | None:
    cur.execute(f"SELECT {_ITEM_COLS} FROM work_items WHERE conversation_id = ?", (conversation_id,))
    r = cur.fetchone()
    return None if r is None else _item(r)


def _enqueue_txn(
    cur: Cursor, conversation_id: str, customer_id: str, team_id: str, now: float, state: str = QUEUED
) -> WorkItem:
    found = _get_item_txn(cur, conversation_id)
    if found is not None:
        return found
    cur.execute(
        cur.engine.insert_ignore("work_items", "conversation_id, customer_id, team_id, state, queued_at",
                                 "?, ?, ?, ?, ?", "conversation_id"),
        (conversation_id, customer_id, team_id, state, now),
    )
    item = _get_item_txn(cur, conversation_id)
    assert item is not None
    return item


def _serves_customer_txn(cur: Cursor, customer_id: str, team_id: str, agent_id: str) -> bool:
    cur.execute("SELECT 1 FROM work_items WHERE customer_id = ? AND (team_id = ? OR agent_id = ?) LIMIT 1",
                (customer_id, team_id, agent_id))
    return cur.fetchone() is not None


def _handoff_txn(cur: Cursor, conversation_id: str, now: float) -> WorkItem | None:
    _lock_txn(cur)
    cur.execute("UPDATE work_items SET state = ?, queued_at = ? WHERE conversation_id = ? AND state = ?",
                (QUEUED, now, conversation_id, BOT))
    if cur.rowcount <= 0:
        return None
    return _get_item_txn(cur, conversation_id)


def _assign_next_txn(cur: Cursor, now: float, limit: int) -> list[Assignment]:
    _lock_txn(cur)
    cur.execute(
        "SELECT conversation_id, customer_id, team_id FROM work_items WHERE state = ?"
        " ORDER BY queued_at, conversation_id LIMIT ?",
        (QUEUED, max(limit * 20, 200)),
    )
    queued = [(r[0], r[1], r[2]) for r in cur.fetchall()]
    if not queued:
        return []
    cur.execute(
        f"SELECT {_AGENT_COLS} FROM agents WHERE status = 'online' AND disabled = 0 AND load_count < capacity"
    )
    agents = [_agent(r) for r in cur.fetchall()]
    out = []
    for conv, customer, agent_id in pick_assignments(queued, agents, limit):
        cur.execute(
            "UPDATE work_items SET state = ?, agent_id = ?, assigned_at = ? WHERE conversation_id = ? AND state = ?",
            (ASSIGNED, agent_id, now, conv, QUEUED),
        )
        cur.execute("UPDATE agents SET load_count = load_count + 1 WHERE id = ?", (agent_id,))
        out.append(Assignment(conv, customer, agent_id))
    return out


def _take_txn(cur: Cursor, conversation_id: str, customer_id: str, agent_id: str, now: float) -> Assignment | None:
    _lock_txn(cur)
    item = _get_item_txn(cur, conversation_id)
    if item is None:
        _enqueue_txn(cur, conversation_id, customer_id, "", now)
        item = _get_item_txn(cur, conversation_id)
        assert item is not None
    if item.state == CLOSED:
        raise WorkflowError("the conversation is closed", "conversation_closed")
    if item.state == ASSIGNED:
        if item.agent_id == agent_id:
            return None
        raise WorkflowError("the conversation is assigned to another agent")
    cur.execute("UPDATE work_items SET state = ?, agent_id = ?, assigned_at = ? WHERE conversation_id = ?",
                (ASSIGNED, agent_id, now, conversation_id))
    cur.execute("UPDATE agents SET load_count = load_count + 1 WHERE id = ?", (agent_id,))
    return Assignment(conversation_id, item.customer_id, agent_id)


def _release(cur: Cursor, item: WorkItem) -> None:
    if item.state == ASSIGNED and item.agent_id is not None:
        cur.execute("UPDATE agents SET load_count = load_count - 1 WHERE id = ? AND load_count > 0", (item.agent_id,))


def _transfer_txn(
    cur: Cursor, conversation_id: str, to_agent: str | None, to_team: str | None, author_id: str,
    note: str | None, now: float, note_after_seq: int = 0,
) -> tuple[WorkItem, WorkItem]:
    _lock_txn(cur)
    before = _get_item_txn(cur, conversation_id)
    if before is None or before.state == CLOSED:
        raise WorkflowError("the conversation is not open", "not_found")
    if to_agent is not None:
        target = _get_agent_txn(cur, to_agent)
        if target is None or target.disabled or target.role not in ("agent", "admin"):
            raise WorkflowError("no such agent", "not_found")
        if target.id == before.agent_id:
            raise WorkflowError("the conversation is already theirs")
        if target.load >= target.capacity:
            raise WorkflowError("that agent is at capacity", "at_capacity")
        _release(cur, before)
        cur.execute(
            "UPDATE work_items SET state = ?, agent_id = ?, assigned_at = ?, team_id = ? WHERE conversation_id = ?",
            (ASSIGNED, target.id, now, target.team_id, conversation_id),
        )
        cur.execute("UPDATE agents SET load_count = load_count + 1 WHERE id = ?", (target.id,))
    else:
        team = to_team or ""
        if team:
            cur.execute("SELECT 1 FROM teams WHERE id = ?", (team,))
            if cur.fetchone() is None:
                raise WorkflowError("no such team", "not_found")
        _release(cur, before)
        cur.execute(
            "UPDATE work_items SET state = ?, agent_id = NULL, assigned_at = NULL, team_id = ?, queued_at = ?"
            " WHERE conversation_id = ?",
            (QUEUED, team, now, conversation_id),
        )
    if note:
        _add_note_txn(cur, conversation_id, author_id, note, now, note_after_seq)
    after = _get_item_txn(cur, conversation_id)
    assert after is not None
    return before, after


def _close_txn(cur: Cursor, conversation_id: str, now: float) -> WorkItem | None:
    _lock_txn(cur)
    before = _get_item_txn(cur, conversation_id)
    if before is None or before.state == CLOSED:
        return None
    _release(cur, before)
    cur.execute("UPDATE work_items SET state = ?, closed_at = ? WHERE conversation_id = ?",
                (CLOSED, now, conversation_id))
    cur.execute("UPDATE conversations SET status = 'closed', closed_at = ? WHERE id = ? AND status = 'open'",
                (now, conversation_id))
    return before


def _reopen_txn(cur: Cursor, conversation_id: str, now: float) -> WorkItem | None:
    _lock_txn(cur)
    before = _get_item_txn(cur, conversation_id)
    if before is None or before.state != CLOSED:
        return None
    cur.execute(
        "UPDATE work_items SET state = ?, agent_id = NULL, assigned_at = NULL, closed_at = NULL, queued_at = ?"
        " WHERE conversation_id = ?",
        (QUEUED, now, conversation_id),
    )
    cur.execute("UPDATE conversations SET status = 'open', closed_at = NULL WHERE id = ?", (conversation_id,))
    return _get_item_txn(cur, conversation_id)


def _rate_txn(cur: Cursor, conversation_id: str, rating: int, comment: str | None, now: float) -> bool:
    cur.execute(
        "UPDATE work_items SET rating = ?, rating_comment = ?, rated_at = ? WHERE conversation_id = ? AND state = ?",
        (rating, comment, now, conversation_id, CLOSED),
    )
    if cur.rowcount <= 0:
        return False
    add_outbox_txn(cur, "conversation.rated", conversation_id, now,
                   {"conversation": conversation_id, "rating": rating, "comment": comment, "ts": now})
    return True


def _list_items_txn(
    cur: Cursor, state: str | None, agent_id: str | None, team_id: str | None, limit: int,
    queued_before: float | None = None, unread_only: bool = False,
) -> list[WorkItem]:
    where: list[str] = []
    args: list[Any] = []
    for col, value in (("state", state), ("agent_id", agent_id), ("team_id", team_id)):
        if value is not None:
            where.append(f"w.{col} = ?")
            args.append(value)
    if queued_before is not None:
        where.append("w.state = ? AND w.queued_at <= ?")
        args.extend((QUEUED, queued_before))
    if unread_only:
        where.append("EXISTS (SELECT 1 FROM participants p WHERE p.conversation_id = w.conversation_id"
                     " AND p.user_id = w.agent_id AND p.unread > 0)")
    cols = ", ".join("w." + c.strip() for c in _ITEM_COLS.split(","))
    sql = f"SELECT {cols} FROM work_items w"
    if where:
        sql += " WHERE " + " AND ".join(where)
    cur.execute(sql + " ORDER BY w.queued_at, w.conversation_id LIMIT ?", (*args, limit))
    return [_item(r) for r in cur.fetchall()]


def _agent_unread_txn(cur: Cursor, conversation_ids: list[str]) -> dict[str, int]:
    if not conversation_ids:
        return {}
    marks = ", ".join("?" for _ in conversation_ids)
    cur.execute("SELECT w.conversation_id, p.unread FROM work_items w JOIN participants p"
                " ON p.conversation_id = w.conversation_id AND p.user_id = w.agent_id"
                f" WHERE w.conversation_id IN ({marks})", tuple(conversation_ids))
    return {str(c): int(n) for c, n in cur.fetchall()}


def _notes_txn(cur: Cursor, conversation_id: str, after_seq: int) -> list[Note]:
    cur.execute("SELECT conversation_id, author_id, body, ts, after_seq, note_id FROM work_notes"
                " WHERE conversation_id = ? AND after_seq > ? ORDER BY after_seq, ts", (conversation_id, after_seq))
    return [Note(r[0], r[1], r[2], float(r[3]), int(r[4]), r[5]) for r in cur.fetchall()]


def _add_note_txn(cur: Cursor, conversation_id: str, author_id: str, body: str, now: float, after_seq: int) -> Note:
    note = Note(conversation_id, author_id, body, now, after_seq, uuid.uuid4().hex)
    cur.execute("INSERT INTO work_notes (conversation_id, author_id, body, ts, after_seq, note_id)"
                " VALUES (?, ?, ?, ?, ?, ?)", (conversation_id, author_id, body, now, after_seq, note.id))
    add_outbox_txn(cur, "note.created", conversation_id, now, note.to_wire())
    return note


def _csat_report_txn(cur: Cursor, since: float) -> dict[str, Any]:
    cur.execute("SELECT agent_id, rating FROM work_items WHERE rating IS NOT NULL AND rated_at >= ?", (since,))
    return csat_summary([(r[0], int(r[1])) for r in cur.fetchall()])


def csat_summary(rows: list[tuple[str | None, int]]) -> dict[str, Any]:
    """Count, average and distribution of ratings, overall and per agent."""
    def summary(ratings: list[int]) -> dict[str, Any]:
        return {
            "count": len(ratings),
            "average": round(sum(ratings) / len(ratings), 3) if ratings else None,
            "distribution": {str(i): ratings.count(i) for i in range(1, 6)},
        }

    by_agent: dict[str, list[int]] = {}
    for agent, rating in rows:
        by_agent.setdefault(agent or "", []).append(rating)
    out = summary([r for _, r in rows])
    out["by_agent"] = {a: summary(r) for a, r in sorted(by_agent.items())}
    return out


class SqlWorkflowStore:
    """WorkflowStore over :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_team(self, team_id: str, name: str, now: float) -> "Deferred[Team]":
        return self._db.run_interaction("create_team", _create_team_txn, team_id, name, now)

    def list_teams(self) -> "Deferred[list[Team]]":
        return self._db.run_interaction("list_teams", _list_teams_txn)

    def rename_team(self, team_id: str, name: str) -> "Deferred[Team | None]":
        return self._db.run_interaction("rename_team", _rename_team_txn, team_id, name)

    def create_agent(self, agent: Agent) -> "Deferred[Agent]":
        return self._db.run_interaction("create_agent", _create_agent_txn, agent)

    def get_agent(self, agent_id: str) -> "Deferred[Agent | None]":
        return self._db.run_interaction("get_agent", _get_agent_txn, agent_id)

    def get_agent_by_login(self, login: str) -> "Deferred[Agent | None]":
        return self._db.run_interaction("get_agent_by_login", _get_agent_by_login_txn, login)

    def list_agents(self) -> "Deferred[list[Agent]]":
        return self._db.run_interaction("list_agents", _list_agents_txn)

    def ensure_agent(self, agent_id: str, role: str, name: str, capacity: int, now: float) -> "Deferred[Agent]":
        return self._db.run_interaction("ensure_agent", _ensure_agent_txn, agent_id, role, name, capacity, now)

    def update_agent(self, agent_id: str, changes: dict[str, Any], now: float) -> "Deferred[tuple[Agent | None, list[str]]]":
        return self._db.run_interaction("update_agent", _update_agent_txn, agent_id, changes, now)

    def save_refresh(self, token_hash: str, agent_id: str, expires_at: float) -> "Deferred[None]":
        return self._db.run_interaction("save_refresh", _save_refresh_txn, token_hash, agent_id, expires_at)

    def use_refresh(self, token_hash: str, now: float) -> "Deferred[str | None]":
        return self._db.run_interaction("use_refresh", _use_refresh_txn, token_hash, now)

    def set_status(self, agent_id: str, status: str) -> "Deferred[Agent | None]":
        return self._db.run_interaction("set_status", _set_status_txn, agent_id, status)

    def watched_agents(self) -> "Deferred[list[tuple[Agent, float]]]":
        return self._db.run_interaction("watched_agents", _watched_agents_txn)

    def mark_absent(self, agent_id: str, since: float) -> "Deferred[None]":
        return self._db.run_interaction("mark_absent", _mark_absent_txn, agent_id, since)

    def requeue_absent(self, now: float, absent_for: float, agent_ids: list[str]) -> "Deferred[list[tuple[str, str]]]":
        return self._db.run_interaction("requeue_absent", _requeue_absent_txn, now, absent_for, agent_ids)

    def enqueue(
        self, conversation_id: str, customer_id: str, team_id: str, now: float, state: str = QUEUED
    ) -> "Deferred[WorkItem]":
        return self._db.run_interaction("enqueue", _enqueue_txn, conversation_id, customer_id, team_id, now, state)

    def handoff(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        return self._db.run_interaction("handoff", _handoff_txn, conversation_id, now)

    def assign_next(self, now: float, limit: int) -> "Deferred[list[Assignment]]":
        return self._db.run_interaction("assign_next", _assign_next_txn, now, limit)

    def take(self, conversation_id: str, customer_id: str, agent_id: str, now: float) -> "Deferred[Assignment | None]":
        return self._db.run_interaction("take", _take_txn, conversation_id, customer_id, agent_id, now)

    def transfer(
        self, conversation_id: str, to_agent: str | None, to_team: str | None, author_id: str, note: str | None,
        now: float, note_after_seq: int = 0,
    ) -> "Deferred[tuple[WorkItem, WorkItem]]":
        return self._db.run_interaction("transfer", _transfer_txn, conversation_id, to_agent, to_team, author_id,
                                        note, now, note_after_seq)

    def close(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        return self._db.run_interaction("close", _close_txn, conversation_id, now)

    def reopen(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        return self._db.run_interaction("reopen", _reopen_txn, conversation_id, now)

    def rate(self, conversation_id: str, rating: int, comment: str | None, now: float) -> "Deferred[bool]":
        return self._db.run_interaction("rate", _rate_txn, conversation_id, rating, comment, now)

    def get_item(self, conversation_id: str) -> "Deferred[WorkItem | None]":
        return self._db.run_interaction("get_item", _get_item_txn, conversation_id)

    def serves_customer(self, customer_id: str, team_id: str, agent_id: str) -> "Deferred[bool]":
        return self._db.run_interaction("serves_customer", _serves_customer_txn, customer_id, team_id, agent_id)

    def list_items(
        self, state: str | None, agent_id: str | None, team_id: str | None, limit: int,
        queued_before: float | None = None, unread_only: bool = False,
    ) -> "Deferred[list[WorkItem]]":
        return self._db.run_interaction("list_items", _list_items_txn, state, agent_id, team_id, limit,
                                        queued_before, unread_only)

    def agent_unread(self, conversation_ids: list[str]) -> "Deferred[dict[str, int]]":
        return self._db.run_interaction("agent_unread", _agent_unread_txn, conversation_ids)

    def notes(self, conversation_id: str, after_seq: int = -1) -> "Deferred[list[Note]]":
        return self._db.run_interaction("notes", _notes_txn, conversation_id, after_seq)

    def add_note(self, conversation_id: str, author_id: str, body: str, now: float,
                 after_seq: int) -> "Deferred[Note]":
        return self._db.run_interaction("add_note", _add_note_txn, conversation_id, author_id, body, now, after_seq)

    def csat_report(self, since: float) -> "Deferred[dict[str, Any]]":
        return self._db.run_interaction("csat_report", _csat_report_txn, since)
