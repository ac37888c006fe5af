"""In-memory twins of the storage seams: for tests and as executable specs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from supportchat.storage.models import (
    EVENT,
    AppendRequest,
    AppendResult,
    Conflict,
    Conversation,
    IdempotencyRecord,
    Message,
    NotFound,
    Participant,
    SessionState,
    StoreError,
    new_id,
    wire_id,
)


class MemoryIdempotencyStore:
    """Idempotency keys in a dict with expiry times."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], tuple[IdempotencyRecord, float]] = {}

    def lookup_now(self, sender_id: str, client_msg_id: str, now: float) -> IdempotencyRecord | None:
        entry = self._keys.get((sender_id, client_msg_id))
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def lookup(self, sender_id: str, client_msg_id: str, now: float) -> "Deferred[IdempotencyRecord | None]":
        return succeed(self.lookup_now(sender_id, client_msg_id, now))

    def record_now(self, sender_id: str, client_msg_id: str, outcome: IdempotencyRecord, expires_at: float, now: float) -> bool:
        if self.lookup_now(sender_id, client_msg_id, now) is not None:
            return False
        self._keys[(sender_id, client_msg_id)] = (outcome, expires_at)
        return True

    def record(self, sender_id: str, client_msg_id: str, outcome: IdempotencyRecord, expires_at: float) -> "Deferred[bool]":
        return succeed(self.record_now(sender_id, client_msg_id, outcome, expires_at, outcome.ts))

    def purge(self, now: float) -> "Deferred[int]":
        dead = [k for k, (_, exp) in self._keys.items() if exp <= now]
        for k in dead:
            del self._keys[k]
        return succeed(len(dead))


class _Read:
    __slots__ = ("last_read_seq", "unread")

    def __init__(self) -> None:
        self.last_read_seq = 0
        self.unread = 0


class MemoryConversationStore:
    """Conversations, participants, messages and session state in dicts.

    Also implements the session-state seam, since both share the unread
    counters that each append updates atomically.
    """

    def __init__(self, idempotency: MemoryIdempotencyStore | None = None) -> None:
        self.idempotency = idempotency or MemoryIdempotencyStore()
        self._conversations: dict[str, Conversation] = {}
        self._participants: dict[str, dict[str, Participant]] = {}
        self._messages: dict[str, list[Message]] = {}
        self._reads: dict[tuple[str, str], _Read] = {}
        self._by_id: dict[str, Message] = {}

    # -- conversations -------------------------------------------------
    def open_conversation(self, customer_id: str, now: float) -> "Deferred[tuple[Conversation, bool]]":
        for conv in self._conversations.values():
            if conv.customer_id == customer_id and conv.status == "open":
                return succeed((conv, False))
        conv = Conversation(id=new_id("c", now), customer_id=customer_id, status="open", created_at=now)
        self._conversations[conv.id] = conv
        self._participants[conv.id] = {customer_id: Participant(customer_id, "customer")}
        self._messages[conv.id] = []
        self._reads[(conv.id, customer_id)] = _Read()
        return succeed((conv, True))

    def get_conversation(self, conversation_id: str) -> "Deferred[Conversation | None]":
        return succeed(self._conversations.get(conversation_id))

    def remove_participant(self, conversation_id: str, user_id: str) -> "Deferred[bool]":
        removed = self._participants.get(conversation_id, {}).pop(user_id, None)
        self._reads.pop((conversation_id, user_id), None)
        return succeed(removed is not None)

    def set_status(self, conversation_id: str, status: str, now: float) -> None:
        """What the workflow's close/reopen does to the SQL row (twin only)."""
        conv = self._conversations.get(conversation_id)
        if conv is not None:
            self._conversations[conversation_id] = replace(
                conv, status=status, closed_at=now if status == "closed" else None)

    def list_conversations(self, user_id: str) -> "Deferred[list[Conversation]]":
        out = [
            c for c in self._conversations.values()
            if c.status == "open" and user_id in self._participants.get(c.id, {})
        ]
        out.sort(key=lambda c: c.created_at)
        return succeed(out)

    def list_unassigned(self, limit: int) -> "Deferred[list[Conversation]]":
        out = [
            c for c in self._conversations.values()
            if c.status == "open"
            and not any(p.role == "agent" for p in self._participants.get(c.id, {}).values())
        ]
        out.sort(key=lambda c: c.created_at)
        return succeed(out[:limit])

    def get_participants(self, conversation_id: str) -> "Deferred[list[Participant]]":
        return succeed(list(self._participants.get(conversation_id, {}).values()))

    # -- messages ------------------------------------------------------
    def append(self, request: AppendRequest) -> "Deferred[AppendResult]":
        try:
            return succeed(self._append(request))
        except StoreError as e:
            return fail(e)

    def _append(self, req: AppendRequest) -> AppendResult:
        if req.msg_id is not None and req.msg_id in self._by_id:
            done = self._by_id[req.msg_id]
            return AppendResult(
                message=done, duplicate=False, participants=tuple(self._participants[done.conversation_id].values())
            )
        if req.client_msg_id is not None:
            prior = self.idempotency.lookup_now(req.sender_id, req.client_msg_id, req.ts)
            if prior is not None:
                msgs = self._messages[prior.conversation_id]
                return AppendResult(
                    message=msgs[prior.seq - 1],
                    duplicate=True,
                    participants=tuple(self._participants[prior.conversation_id].values()),
                )
        conv = self._conversations.get(req.conversation_id)
        if conv is None:
            raise NotFound("no such conversation")
        parts = self._participants[conv.id]
        if req.join and req.sender_id in parts:
            raise Conflict("already a participant")
        if req.require_participant and not req.join and req.sender_id not in parts:
            raise NotFound("no such conversation")
        if req.join:
            parts[req.sender_id] = Participant(req.sender_id, req.sender_role)
            self._reads[(conv.id, req.sender_id)] = _Read()
        seq = max(conv.last_seq, req.seq_floor) + 1
        msg = Message(
            conversation_id=conv.id,
            msg_id=req.msg_id or new_id("m", req.ts),
            seq=seq,
            sender_id=req.sender_id,
            sender_role=req.sender_role,
            client_msg_id=req.client_msg_id,
            kind=req.kind,
            body=req.body,
            ts=req.ts,
            data=req.data,
        )
        self._messages[conv.id].append(msg)
        self._by_id[msg.msg_id] = msg
        self._conversations[conv.id] = replace(conv, last_seq=seq, last_msg_id=msg.msg_id, last_ts=req.ts)
        for uid in parts:
            read = self._reads[(conv.id, uid)]
            if uid == req.sender_id:
                read.last_read_seq = seq
                read.unread = 0
            elif req.kind != EVENT:
                read.unread += 1
        if req.client_msg_id is not None:
            self.idempotency.record_now(
                req.sender_id,
                req.client_msg_id,
                IdempotencyRecord(conv.id, msg.msg_id, seq, req.ts),
                req.ts + req.idempotency_window,
                req.ts,
            )
        return AppendResult(message=msg, duplicate=False, participants=tuple(parts.values()))

    def get_messages(self, conversation_id: str, after_seq: int, limit: int) -> "Deferred[list[Message]]":
        msgs = self._messages.get(conversation_id, [])
        return succeed(msgs[max(after_seq, 0): max(after_seq, 0) + limit])

    # -- session state -------------------------------------------------
    def get_states(self, user_id: str) -> "Deferred[list[SessionState]]":
        out = []
        for (cid, uid), read in self._reads.items():
            if uid != user_id:
                continue
            conv = self._conversations[cid]
            if conv.status != "open":
                continue
            out.append(SessionState(cid, read.unread, read.last_read_seq, conv.last_seq, conv.last_msg_id, conv.last_ts, conv.status))
        out.sort(key=lambda s: s.conversation_id)
        return succeed(out)

    def read_positions(self, conversation_id: str) -> "Deferred[dict[str, int]]":
        return succeed({uid: self._reads[(conversation_id, uid)].last_read_seq
                        for uid in self._participants.get(conversation_id, {}) if (conversation_id, uid) in self._reads})

    def mark_read(self, user_id: str, conversation_id: str, seq: int) -> "Deferred[int]":
        read = self._reads.get((conversation_id, user_id))
        if read is None:
            return fail(NotFound("no such conversation"))
        conv = self._conversations[conversation_id]
        seq = max(0, min(seq, conv.last_seq))
        read.last_read_seq = seq
        read.unread = sum(
            1 for m in self._messages[conversation_id][seq:]
            if m.kind != EVENT and m.sender_id != user_id
        )
        return succeed(read.unread)


class MemoryPresenceStore:
    """Presence with a TTL measured on the injected clock."""

    def __init__(self, clock: IReactorTime, ttl: float) -> None:
        self._clock = clock
        self._ttl = ttl
        self._seen: dict[str, dict[str, float]] = {}

    def touch(self, user_id: str, connection_id: str) -> "Deferred[None]":
        self._seen.setdefault(user_id, {})[connection_id] = self._clock.seconds() + self._ttl
        return succeed(None)

    def remove(self, user_id: str, connection_id: str) -> "Deferred[None]":
        conns = self._seen.get(user_id)
        if conns is not None:
            conns.pop(connection_id, None)
            if not conns:
                del self._seen[user_id]
        return succeed(None)

    def _alive(self, user_id: str) -> bool:
        now = self._clock.seconds()
        conns = self._seen.get(user_id, {})
        for cid in [c for c, exp in conns.items() if exp <= now]:
            del conns[cid]
        if not conns:
            self._seen.pop(user_id, None)
            return False
        return True

    def is_online(self, user_id: str) -> "Deferred[bool]":
        return succeed(self._alive(user_id))

    def online_users(self) -> "Deferred[list[str]]":
        return succeed(sorted(u for u in list(self._seen) if self._alive(u)))


def _words(text: str) -> set[str]:
    import re

    return {w.lower() for w in re.findall(r"\w+", text)}


class MemoryHistoryStore:
    """History, search, retention and privacy over a MemoryConversationStore."""

    def __init__(self, conversations: MemoryConversationStore) -> None:
        self._c = conversations

    def visible_conversation(self, conversation_id: str, user_id: str, role: str) -> "Deferred[Conversation | None]":
        conv = self._c._conversations.get(conversation_id)
        if conv is None or (role != "admin" and user_id not in self._c._participants.get(conversation_id, {})):
            return succeed(None)
        return succeed(conv)

    def messages_page(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> "Deferred[list[Message]]":
        msgs = [
            m for m in self._c._messages.get(conversation_id, [])
            if m.seq > (after_seq or 0) and (before_seq is None or m.seq < before_seq)
        ]
        if before_seq is not None and after_seq is None:
            return succeed(msgs[-limit:] if limit else [])
        return succeed(msgs[:limit])

    def search(self, user_id: str | None, text: str, limit: int) -> "Deferred[list[Message]]":
        wanted = _words(text)
        if not wanted:
            return succeed([])
        found = [
            m for cid, msgs in self._c._messages.items()
            if user_id is None or user_id in self._c._participants.get(cid, {})
            for m in msgs
            if m.kind != EVENT and wanted <= _words(m.body)
        ]
        found.sort(key=lambda m: (m.ts, m.msg_id), reverse=True)
        return succeed(found[:limit])

    def close_conversation(self, conversation_id: str, now: float) -> "Deferred[bool]":
        conv = self._c._conversations.get(conversation_id)
        if conv is None or conv.status != "open":
            return succeed(False)
        self._c._conversations[conversation_id] = replace(conv, status="closed", closed_at=now)
        return succeed(True)

    def _delete(self, ids: list[str]) -> int:
        n = 0
        for cid in ids:
            msgs = self._c._messages.pop(cid, [])
            for m in msgs:
                self._c._by_id.pop(m.msg_id, None)
            parts = self._c._participants.pop(cid, {})
            for uid in parts:
                self._c._reads.pop((cid, uid), None)
            del self._c._conversations[cid]
            keys = self._c.idempotency._keys
            for k in [k for k, (rec, _) in keys.items() if rec.conversation_id == cid]:
                del keys[k]
            n += 1 + len(msgs) + len(parts)
        return n

    def retention_batch(self, cutoff: float, batch: int) -> "Deferred[int]":
        ids = [
            c.id for c in self._c._conversations.values()
            if c.status == "closed" and c.closed_at is not None and c.closed_at < cutoff
        ]
        return succeed(self._delete(ids))

    def erase_customer_batch(self, customer_id: str, batch: int, now: float = 0.0) -> "Deferred[int]":
        ids = [c.id for c in self._c._conversations.values() if c.customer_id == customer_id]
        n = self._delete(ids)
        keys = self._c.idempotency._keys
        for k in [k for k in keys if k[0] == customer_id]:
            del keys[k]
            n += 1
        return succeed(n)

    def export_customer(self, customer_id: str) -> "Deferred[dict[str, Any]]":
        out = []
        convs = sorted(
            (c for c in self._c._conversations.values() if c.customer_id == customer_id),
            key=lambda c: (c.created_at, c.id),
        )
        for conv in convs:
            entry = conv.to_wire()
            entry["participants"] = [p.to_wire() for p in self._c._participants[conv.id].values()]
            messages = [m.to_wire() for m in self._c._messages[conv.id]]
            for m in messages:
                m.pop("type", None)
            entry["messages"] = messages
            entry["workflow"] = None  # the workflow's twin keeps its own records
            out.append(entry)
        return succeed({"customer_id": wire_id(customer_id), "conversations": out})
