"""In-memory twin of :class:`~supportchat.workflow.store.SqlWorkflowStore`."""

from __future__ import annotations

import uuid

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

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
from supportchat.workflow.store import AGENT_FIELDS, csat_summary


class MemoryWorkflowStore:
    """Same behaviour as the SQL store; one process, so no locks needed."""

    def __init__(self, conversations: Any = None) -> None:
        # The MemoryConversationStore whose rows close/reopen update, as the
        # SQL store updates the conversations table in the same transaction.
        self._conversations = conversations
        self.teams: dict[str, Team] = {}
        self.agents: dict[str, Agent] = {}
        self.items: dict[str, WorkItem] = {}
        self.rated_at: dict[str, float] = {}
        self._notes: list[Note] = []
        self._refresh: dict[str, tuple[str, float]] = {}
        self.absent_since: dict[str, float] = {}

    def create_team(self, team_id: str, name: str, now: float) -> "Deferred[Team]":
        if team_id in self.teams:
            return fail(WorkflowError("a team with this id exists"))
        self.teams[team_id] = Team(team_id, name, now)
        return succeed(self.teams[team_id])

    def list_teams(self) -> "Deferred[list[Team]]":
        return succeed(sorted(self.teams.values(), key=lambda t: t.id))

    def rename_team(self, team_id: str, name: str) -> "Deferred[Team | None]":
        if team_id not in self.teams:
            return succeed(None)
        self.teams[team_id] = replace(self.teams[team_id], name=name)
        return succeed(self.teams[team_id])

    def create_agent(self, agent: Agent) -> "Deferred[Agent]":
        if agent.id in self.agents or any(a.login == agent.login for a in self.agents.values()):
            return fail(WorkflowError("an account with this id or login exists"))
        self.agents[agent.id] = agent
        return succeed(agent)

    def get_agent(self, agent_id: str) -> "Deferred[Agent | None]":
        return succeed(self.agents.get(agent_id))

    def get_agent_by_login(self, login: str) -> "Deferred[Agent | None]":
        return succeed(next((a for a in self.agents.values() if a.login == login), None))

    def list_agents(self) -> "Deferred[list[Agent]]":
        return succeed(sorted(self.agents.values(), key=lambda a: a.id))

    def ensure_agent(self, agent_id: str, role: str, name: str, capacity: int, now: float) -> "Deferred[Agent]":
        if agent_id not in self.agents:
            login = agent_id
            if any(a.login == login for a in self.agents.values()):
                login = f"{agent_id}#token"
            self.agents[agent_id] = Agent(agent_id, login, name, role, capacity=capacity, created_at=now)
        return succeed(self.agents[agent_id])

    def update_agent(self, agent_id: str, changes: dict[str, Any], now: float) -> "Deferred[tuple[Agent | None, list[str]]]":
        before = self.agents.get(agent_id)
        if before is None:
            return succeed((None, []))
        fields = {k: v for k, v in changes.items() if k in AGENT_FIELDS}
        if "disabled" in fields:
            fields["disabled"] = bool(fields["disabled"])
        agent = replace(before, **fields)
        requeued: list[str] = []
        if agent.disabled and not before.disabled:
            agent = replace(agent, status="offline", tokens_valid_after=now, load=0)
            self._refresh = {k: v for k, v in self._refresh.items() if v[0] != agent_id}
            for item in list(self.items.values()):
                if item.state == ASSIGNED and item.agent_id == agent_id:
                    self.items[item.conversation_id] = replace(item, state=QUEUED, agent_id=None, assigned_at=None)
                    requeued.append(item.conversation_id)
        self.agents[agent_id] = agent
        return succeed((agent, sorted(requeued)))

    def save_refresh(self, token_hash: str, agent_id: str, expires_at: float) -> "Deferred[None]":
        self._refresh[token_hash] = (agent_id, expires_at)
        return succeed(None)

    def use_refresh(self, token_hash: str, now: float) -> "Deferred[str | None]":
        found = self._refresh.pop(token_hash, None)
        return succeed(found[0] if found is not None and found[1] > now else None)

    def watched_agents(self) -> "Deferred[list[tuple[Agent, float]]]":
        return succeed([(a, self.absent_since.get(a.id, 0.0)) for a in sorted(self.agents.values(), key=lambda a: a.id)
                        if not a.disabled and (a.status != "offline" or a.load > 0)])

    def mark_absent(self, agent_id: str, since: float) -> "Deferred[None]":
        if not since:
            self.absent_since.pop(agent_id, None)
        else:
            self.absent_since.setdefault(agent_id, since)
        return succeed(None)

    def requeue_absent(self, now: float, absent_for: float, agent_ids: list[str]) -> "Deferred[list[tuple[str, str]]]":
        out: list[tuple[str, str]] = []
        for agent in sorted(self.agents.values(), key=lambda a: a.id):
            since = self.absent_since.get(agent.id, 0.0)
            if agent.id not in agent_ids or agent.load <= 0 or not since or since > now - absent_for:
                continue
            for item in sorted(self.items.values(), key=lambda i: i.conversation_id):
                if item.state == ASSIGNED and item.agent_id == agent.id:
                    self.items[item.conversation_id] = replace(item, state=QUEUED, agent_id=None, assigned_at=None)
                    out.append((item.conversation_id, agent.id))
            self.agents[agent.id] = replace(agent, load=0)
        return succeed(out)

    def set_status(self, agent_id: str, status: str) -> "Deferred[Agent | None]":
        agent = self.agents.get(agent_id)
        if agent is not None and not agent.disabled:
            agent = self.agents[agent_id] = replace(agent, status=status)
        return succeed(agent)

    def _load(self, agent_id: str, delta: int) -> None:
        a = self.agents.get(agent_id)
        if a is not None:
            self.agents[agent_id] = replace(a, load=max(0, a.load + delta))

    def enqueue(
        self, conversation_id: str, customer_id: str, team_id: str, now: float, state: str = QUEUED
    ) -> "Deferred[WorkItem]":
        if conversation_id not in self.items:
            self.items[conversation_id] = WorkItem(conversation_id, customer_id, team_id, state, None, now)
        return succeed(self.items[conversation_id])

    def handoff(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        item = self.items.get(conversation_id)
        if item is None or item.state != BOT:
            return succeed(None)
        self.items[conversation_id] = replace(item, state=QUEUED, queued_at=now)
        return succeed(self.items[conversation_id])

    def _queued(self) -> list[WorkItem]:
        return sorted((i for i in self.items.values() if i.state == QUEUED), key=lambda i: (i.queued_at, i.conversation_id))

    def assign_next(self, now: float, limit: int) -> "Deferred[list[Assignment]]":
        queued = [(i.conversation_id, i.customer_id, i.team_id) for i in self._queued()]
        agents = [a for a in self.agents.values() if a.status == "online" and not a.disabled and a.load < a.capacity]
        out = []
        for conv, customer, agent_id in pick_assignments(queued, agents, limit):
            self.items[conv] = replace(self.items[conv], state=ASSIGNED, agent_id=agent_id, assigned_at=now)
            self._load(agent_id, 1)
            out.append(Assignment(conv, customer, agent_id))
        return succeed(out)

    def take(self, conversation_id: str, customer_id: str, agent_id: str, now: float) -> "Deferred[Assignment | None]":
        item = self.items.get(conversation_id)
        if item is None:
            item = WorkItem(conversation_id, customer_id, "", QUEUED, None, now)
        if item.state == CLOSED:
            return fail(WorkflowError("the conversation is closed", "conversation_closed"))
        if item.state == ASSIGNED:
            if item.agent_id == agent_id:
                return succeed(None)
            return fail(WorkflowError("the conversation is assigned to another agent"))
        self.items[conversation_id] = replace(item, state=ASSIGNED, agent_id=agent_id, assigned_at=now)
        self._load(agent_id, 1)
        return succeed(Assignment(conversation_id, item.customer_id, agent_id))

    def _release(self, item: WorkItem) -> None:
        if item.state == ASSIGNED and item.agent_id is not None:
            self._load(item.agent_id, -1)

    def transfer(
        self, conversation_id: str, to_agent: str | None, to_team: str | None, author_id: str, note: str | None,
        now: float, note_after_seq: int = 0,
    ) -> "Deferred[tuple[WorkItem, WorkItem]]":
        before = self.items.get(conversation_id)
        if before is None or before.state == CLOSED:
            return fail(WorkflowError("the conversation is not open", "not_found"))
        if to_agent is not None:
            target = self.agents.get(to_agent)
            if target is None or target.disabled or target.role not in ("agent", "admin"):
                return fail(WorkflowError("no such agent", "not_found"))
            if target.id == before.agent_id:
                return fail(WorkflowError("the conversation is already theirs"))
            if target.load >= target.capacity:
                return fail(WorkflowError("that agent is at capacity", "at_capacity"))
            self._release(before)
            after = replace(before, state=ASSIGNED, agent_id=target.id, assigned_at=now, team_id=target.team_id)
            self._load(target.id, 1)
        else:
            team = to_team or ""
            if team and team not in self.teams:
                return fail(WorkflowError("no such team", "not_found"))
            self._release(before)
            after = replace(before, state=QUEUED, agent_id=None, assigned_at=None, team_id=team, queued_at=now)
        self.items[conversation_id] = after
        if note:
            self._notes.append(Note(conversation_id, author_id, note, now, note_after_seq, uuid.uuid4().hex))
        return succeed((before, after))

    def close(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        before = self.items.get(conversation_id)
        if before is None or before.state == CLOSED:
            return succeed(None)
        self._release(before)
        self.items[conversation_id] = replace(before, state=CLOSED, closed_at=now)
        if self._conversations is not None:
            self._conversations.set_status(conversation_id, "closed", now)
        return succeed(before)

    def reopen(self, conversation_id: str, now: float) -> "Deferred[WorkItem | None]":
        before = self.items.get(conversation_id)
        if before is None or before.state != CLOSED:
            return succeed(None)
        self.items[conversation_id] = replace(before, state=QUEUED, agent_id=None, assigned_at=None, closed_at=None,
                                              queued_at=now)
        if self._conversations is not None:
            self._conversations.set_status(conversation_id, "open", now)
        return succeed(self.items[conversation_id])

    def rate(self, conversation_id: str, rating: int, comment: str | None, now: float) -> "Deferred[bool]":
        item = self.items.get(conversation_id)
        if item is None or item.state != CLOSED:
            return succeed(False)
        self.items[conversation_id] = replace(item, rating=rating, rating_comment=comment)
        self.rated_at[conversation_id] = now
        return succeed(True)

    def get_item(self, conversation_id: str) -> "Deferred[WorkItem | None]":
        return succeed(self.items.get(conversation_id))

    def agent_unread(self, conversation_ids: list[str]) -> "Deferred[dict[str, int]]":
        return succeed(self._unread(conversation_ids))

    def _unread(self, conversation_ids: list[str]) -> dict[str, int]:
        reads = getattr(self._conversations, "_reads", {})
        out = {}
        for cid in conversation_ids:
            item = self.items.get(cid)
            read = reads.get((cid, item.agent_id)) if item is not None and item.agent_id else None
            if read is not None:
                out[cid] = read.unread
        return out

    def serves_customer(self, customer_id: str, team_id: str, agent_id: str) -> "Deferred[bool]":
        return succeed(any(i.customer_id == customer_id and (i.team_id == team_id or i.agent_id == agent_id)
                           for i in self.items.values()))

    def list_items(
        self, state: str | None, agent_id: str | None, team_id: str | None, limit: int,
        queued_before: float | None = None, unread_only: bool = False,
    ) -> "Deferred[list[WorkItem]]":
        unread = self._unread(list(self.items)) if unread_only else {}
        found = [
            i for i in sorted(self.items.values(), key=lambda i: (i.queued_at, i.conversation_id))
            if (state is None or i.state == state) and (agent_id is None or i.agent_id == agent_id)
            and (team_id is None or i.team_id == team_id)
            and (queued_before is None or (i.state == QUEUED and i.queued_at <= queued_before))
            and (not unread_only or unread.get(i.conversation_id, 0) > 0)
        ]
        return succeed(found[:limit])

    def notes(self, conversation_id: str, after_seq: int = -1) -> "Deferred[list[Note]]":
        found = [n for n in self._notes if n.conversation_id == conversation_id and n.after_seq > after_seq]
        return succeed(sorted(found, key=lambda n: (n.after_seq, n.ts)))

    def add_note(self, conversation_id: str, author_id: str, body: str, now: float,
                 after_seq: int) -> "Deferred[Note]":
        note = Note(conversation_id, author_id, body, now, after_seq, uuid.uuid4().hex)
        self._notes.append(note)
        return succeed(note)

    def csat_report(self, since: float) -> "Deferred[dict[str, Any]]":
        rows = [(i.agent_id, i.rating) for i in self.items.values()
                if i.rating is not None and self.rated_at.get(i.conversation_id, 0) >= since]
        return succeed(csat_summary([(a, int(r)) for a, r in rows if r is not None]))
