"""Plain data of the support workflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supportchat.storage.models import wire_id

STATUSES = ("online", "away", "offline")
QUEUED, ASSIGNED, CLOSED = "queued", "assigned", "closed"
# With the bot enabled a new conversation stays with the bot (not in the
# queue) until the bot hands off; then it is queued.
BOT = "bot"
DEFAULT_TEAM = ""


@dataclass(frozen=True)
class Team:
    id: str
    name: str
    created_at: float

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at}


@dataclass(frozen=True)
class Agent:
    """An agent or admin account; ``load`` is how many conversations are
    assigned to them now."""

    id: str
    login: str
    name: str
    role: str
    team_id: str = DEFAULT_TEAM
    capacity: int = 3
    status: str = "offline"
    load: int = 0
    disabled: bool = False
    password_hash: str | None = None
    tokens_valid_after: float = 0.0
    created_at: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        # Never the password hash.
        return {
            "id": self.id, "login": self.login, "name": self.name, "role": self.role,
            "team": self.team_id, "capacity": self.capacity, "status": self.status,
            "load": self.load, "disabled": self.disabled, "created_at": self.created_at,
        }


@dataclass(frozen=True)
class WorkItem:
    """A conversation's place in the workflow."""

    conversation_id: str
    customer_id: str  # the customer's principal key
    team_id: str
    state: str
    agent_id: str | None
    queued_at: float
    assigned_at: float | None = None
    closed_at: float | None = None
    rating: int | None = None
    rating_comment: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversation": self.conversation_id, "customer_id": wire_id(self.customer_id), "team": self.team_id,
            "state": self.state, "agent_id": self.agent_id, "queued_at": self.queued_at,
            "assigned_at": self.assigned_at, "closed_at": self.closed_at,
        }
        if self.rating is not None:
            out["rating"] = self.rating
            out["rating_comment"] = self.rating_comment
        return out


@dataclass(frozen=True)
class Assignment:
    conversation_id: str
    customer_id: str
    agent_id: str
    previous_agent_id: str | None = None


@dataclass(frozen=True)
class Note:
    """An internal note: staff only, never in the message log. ``after_seq``
    places it in the conversation (after that message); ``id`` names it."""

    conversation_id: str
    author_id: str
    body: str
    ts: float
    after_seq: int = 0
    id: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"conversation": self.conversation_id, "id": self.id, "author_id": self.author_id, "body": self.body,
                "ts": self.ts, "after_seq": self.after_seq}


class WorkflowError(Exception):
    """A workflow request refused; ``code`` is a protocol error code."""

    code = "conflict"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


def pick_assignments(
    queued: list[tuple[str, str, str]], agents: list[Agent], limit: int
) -> list[tuple[str, str, str]]:
    """Match queued (conversation, customer, team) oldest first to the least
    busy online agent of the team with free capacity (ties: agent id).
    Returns (conversation, customer, agent) triples; ``agents`` are the
    enabled online ones, with their current load."""
    loads = {a.id: a.load for a in agents}
    by_team: dict[str, list[Agent]] = {}
    for a in agents:
        by_team.setdefault(a.team_id, []).append(a)
    out: list[tuple[str, str, str]] = []
    for conv, customer, team in queued:
        if len(out) >= limit:
            break
        free = [a for a in by_team.get(team, []) if loads[a.id] < a.capacity]
        if not free:
            continue
        best = min(free, key=lambda a: (loads[a.id], a.id))
        loads[best.id] += 1
        out.append((conv, customer, best.id))
    return out
