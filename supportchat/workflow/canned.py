"""Canned responses: short texts agents insert by shortcut.

Two scopes: ``team`` (owner = a team id; admins manage them, the team's
agents see them) and ``personal`` (owner = an agent id; only that agent
sees and manages them). A shortcut is unique per (scope, owner).
:class:`SqlCannedStore` and its in-memory twin :class:`MemoryCannedStore`
keep the same contract (tests/test_canned.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from supportchat.storage.database import Cursor, Database
from supportchat.workflow.models import WorkflowError

TEAM, PERSONAL = "team", "personal"
SCOPES = (TEAM, PERSONAL)
FIELDS = ("shortcut", "title", "body")


@dataclass(frozen=True)
class Canned:
    id: str
    scope: str
    owner: str
    shortcut: str
    title: str
    body: str
    created_by: str
    created_at: float
    updated_at: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "scope": self.scope, "owner": self.owner, "shortcut": self.shortcut,
            "title": self.title, "body": self.body, "created_by": self.created_by,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }


def _changed(before: Canned, changes: dict[str, str], now: float) -> Canned:
    return replace(before, shortcut=changes.get("shortcut", before.shortcut), title=changes.get("title", before.title),
                   body=changes.get("body", before.body), updated_at=now)


def _sort_key(c: Canned) -> tuple[str, int, str, str]:
    return (c.shortcut, SCOPES.index(c.scope), c.owner, c.id)


class CannedStore(Protocol):
    def create(self, canned: Canned) -> "Deferred[Canned]":
        """WorkflowError(conflict) when the owner already has the shortcut."""
    def get(self, canned_id: str) -> "Deferred[Canned | None]": ...
    def visible(self, team_ids: list[str] | None, agent_id: str) -> "Deferred[list[Canned]]":
        """Team responses of ``team_ids`` (None: every team) and the personal
        ones of ``agent_id``, by shortcut."""
    def update(self, canned_id: str, changes: dict[str, str], now: float) -> "Deferred[Canned | None]":
        """Change FIELDS; None if unknown; WorkflowError(conflict) on a shortcut clash."""
    def delete(self, canned_id: str) -> "Deferred[bool]": ...


_COLS = "id, scope, owner, shortcut, title, body, created_by, created_at, updated_at"


def _row(r: Any) -> Canned:
    return Canned(r[0], r[1], r[2], r[3], r[4], r[5], r[6], float(r[7]), float(r[8]))


def _get_txn(cur: Cursor, canned_id: str) -> Canned | None:
    cur.execute(f"SELECT {_COLS} FROM canned_responses WHERE id = ?", (canned_id,))
    r = cur.fetchone()
    return None if r is None else _row(r)


def _taken(cur: Cursor, scope: str, owner: str, shortcut: str, other_than: str) -> bool:
    cur.execute("SELECT id FROM canned_responses WHERE scope = ? AND owner = ? AND shortcut = ? AND id <> ?",
                (scope, owner, shortcut, other_than))
    return cur.fetchone() is not None


def _create_txn(cur: Cursor, c: Canned) -> Canned:
    if _taken(cur, c.scope, c.owner, c.shortcut, c.id):
        raise WorkflowError("this shortcut is taken")
    cur.execute(f"INSERT INTO canned_responses ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (c.id, c.scope, c.owner, c.shortcut, c.title, c.body, c.created_by, c.created_at, c.updated_at))
    return c


def _visible_txn(cur: Cursor, team_ids: list[str] | None, agent_id: str) -> list[Canned]:
    if team_ids is None:
        cur.execute(f"SELECT {_COLS} FROM canned_responses WHERE scope = ? OR (scope = ? AND owner = ?)",
                    (TEAM, PERSONAL, agent_id))
    else:
        marks = ", ".join("?" for _ in team_ids) or "NULL"
        cur.execute(f"SELECT {_COLS} FROM canned_responses WHERE (scope = ? AND owner IN ({marks}))"
                    " OR (scope = ? AND owner = ?)", (TEAM, *team_ids, PERSONAL, agent_id))
    return sorted((_row(r) for r in cur.fetchall()), key=_sort_key)


def _update_txn(cur: Cursor, canned_id: str, changes: dict[str, str], now: float) -> Canned | None:
    before = _get_txn(cur, canned_id)
    if before is None:
        return None
    after = _changed(before, changes, now)
    if after.shortcut != before.shortcut and _taken(cur, after.scope, after.owner, after.shortcut, canned_id):
        raise WorkflowError("this shortcut is taken")
    cur.execute("UPDATE canned_responses SET shortcut = ?, title = ?, body = ?, updated_at = ? WHERE id = ?",
                (after.shortcut, after.title, after.body, now, canned_id))
    return after


def _delete_txn(cur: Cursor, canned_id: str) -> bool:
    cur.execute("DELETE FROM canned_responses WHERE id = ?", (canned_id,))
    return cur.rowcount > 0


class SqlCannedStore:
    """CannedStore over :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, canned: Canned) -> "Deferred[Canned]":
        return self._db.run_interaction("canned_create", _create_txn, canned)

    def get(self, canned_id: str) -> "Deferred[Canned | None]":
        return self._db.run_interaction("canned_get", _get_txn, canned_id)

    def visible(self, team_ids: list[str] | None, agent_id: str) -> "Deferred[list[Canned]]":
        return self._db.run_interaction("canned_visible", _visible_txn, team_ids, agent_id)

    def update(self, canned_id: str, changes: dict[str, str], now: float) -> "Deferred[Canned | None]":
        return self._db.run_interaction("canned_update", _update_txn, canned_id, changes, now)

    def delete(self, canned_id: str) -> "Deferred[bool]":
        return self._db.run_interaction("canned_delete", _delete_txn, canned_id)


class MemoryCannedStore:
    """In-memory twin of :class:`SqlCannedStore`."""

    def __init__(self) -> None:
        self.rows: dict[str, Canned] = {}

    def _taken(self, scope: str, owner: str, shortcut: str, other_than: str) -> bool:
        return any(c.scope == scope and c.owner == owner and c.shortcut == shortcut and c.id != other_than
                   for c in self.rows.values())

    def create(self, canned: Canned) -> "Deferred[Canned]":
        if self._taken(canned.scope, canned.owner, canned.shortcut, canned.id):
            return fail(WorkflowError("this shortcut is taken"))
        self.rows[canned.id] = canned
        return succeed(canned)

    def get(self, canned_id: str) -> "Deferred[Canned | None]":
        return succeed(self.rows.get(canned_id))

    def visible(self, team_ids: list[str] | None, agent_id: str) -> "Deferred[list[Canned]]":
        found = [c for c in self.rows.values()
                 if (c.scope == TEAM and (team_ids is None or c.owner in team_ids))
                 or (c.scope == PERSONAL and c.owner == agent_id)]
        return succeed(sorted(found, key=_sort_key))

    def update(self, canned_id: str, changes: dict[str, str], now: float) -> "Deferred[Canned | None]":
        before = self.rows.get(canned_id)
        if before is None:
            return succeed(None)
        after = _changed(before, changes, now)
        if after.shortcut != before.shortcut and self._taken(after.scope, after.owner, after.shortcut, canned_id):
            return fail(WorkflowError("this shortcut is taken"))
        self.rows[canned_id] = after
        return succeed(after)

    def delete(self, canned_id: str) -> "Deferred[bool]":
        return succeed(self.rows.pop(canned_id, None) is not None)
