"""Where a bot's multi-turn state lives: outside any bot process.

One ``BotState`` per conversation, stored with a version. ``save`` is a
compare-and-set: it writes version N only if the stored version is N-1
(or nothing is stored and N is 1), otherwise it returns False and the
caller reloads and decides again. Two bot nodes handling messages of the
same dialogue therefore cannot both advance it: one wins, the other sees
the winner's state. The state also carries the replies decided for the
last handled message (``outbox``), so a node that dies after saving but
before appending them is replaced by one that appends exactly those
(idempotent by the triggering msg_id).

Implementations: ``MemoryBotStateStore`` (twin), ``SqlBotStateStore``
(``bot_states`` table; embedded default and any SQL engine) and
``RedisBotStateStore`` (a hash per conversation, CAS in a Lua script).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

from supportchat.storage.database import Cursor, Database

STATE_TTL = 30 * 86400


@dataclass(frozen=True)
class Reply:
    """One bot message to append: ``text`` or ``event`` with optional data."""

    kind: str
    body: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class BotState:
    conversation_id: str
    version: int = 0
    # bot: answering; flow: collecting slots; leaving_message: after hours,
    # the next message is the customer's note; handed_off: silent.
    mode: str = "bot"
    flow: str | None = None
    slot: int = 0
    attempts: int = 0
    slots: dict[str, str] = field(default_factory=dict)
    misses: int = 0
    greeted: bool = False
    resolved: bool = False
    answered: int = 0
    handoff_reason: str | None = None
    # The customer's language, kept while a flow collects values such as
    # order numbers (which say nothing about the language).
    lang: str = "en"
    last_seq: int = 0
    last_msg_id: str | None = None
    outbox: tuple[Reply, ...] = ()
    updated_at: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("version")
        data["outbox"] = [asdict(r) for r in self.outbox]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, version: int) -> "BotState":
        data = json.loads(text)
        data["outbox"] = tuple(Reply(**r) for r in data.get("outbox", []))
        known = set(cls.__dataclass_fields__)
        return cls(version=version, **{k: v for k, v in data.items() if k in known})

    def next(self, **changes: Any) -> "BotState":
        """The successor state (version + 1)."""
        return replace(self, version=self.version + 1, **changes)


class BotStateStore(Protocol):
    def load(self, conversation_id: str) -> "Deferred[BotState | None]": ...

    def save(self, state: BotState) -> "Deferred[bool]":
        """Store ``state`` if the stored version is ``state.version - 1``
        (none stored counts as 0); False, changing nothing, otherwise."""


class MemoryBotStateStore:
    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, str]] = {}

    def load(self, conversation_id: str) -> "Deferred[BotState | None]":
        row = self._rows.get(conversation_id)
        return succeed(None if row is None else BotState.from_json(row[1], row[0]))

    def save(self, state: BotState) -> "Deferred[bool]":
        current = self._rows.get(state.conversation_id, (0, ""))[0]
        if current != state.version - 1:
            return succeed(False)
        self._rows[state.conversation_id] = (state.version, state.to_json())
        return succeed(True)


# -- SQL ---------------------------------------------------------------------

def load_state_txn(cur: Cursor, conversation_id: str) -> BotState | None:
    cur.execute("SELECT version, data FROM bot_states WHERE conversation_id = ?", (conversation_id,))
    row = cur.fetchone()
    return None if row is None else BotState.from_json(row[1], int(row[0]))


def save_state_txn(cur: Cursor, state: BotState) -> bool:
    if state.version == 1:
        cur.execute(
            cur.engine.insert_ignore("bot_states", "conversation_id, version, data, updated_at", "?, ?, ?, ?",
                                     "conversation_id"),
            (state.conversation_id, 1, state.to_json(), state.updated_at),
        )
    else:
        cur.execute(
            "UPDATE bot_states SET version = ?, data = ?, updated_at = ? WHERE conversation_id = ? AND version = ?",
            (state.version, state.to_json(), state.updated_at, state.conversation_id, state.version - 1),
        )
    return cur.rowcount == 1


class SqlBotStateStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def load(self, conversation_id: str) -> "Deferred[BotState | None]":
        return self._db.run_interaction("bot_state_load", load_state_txn, conversation_id)

    def save(self, state: BotState) -> "Deferred[bool]":
        return self._db.run_interaction("bot_state_save", save_state_txn, state)


# -- Redis -------------------------------------------------------------------

# ARGV: key, expected version, new version, data, ttl -> 1 stored, 0 conflict
SAVE = r"""
local cur = redis.call("HGET", ARGV[1], "version") or "0"
if cur ~= ARGV[2] then return 0 end
redis.call("HSET", ARGV[1], "version", ARGV[3], "data", ARGV[4])
redis.call("EXPIRE", ARGV[1], tonumber(ARGV[5]))
return 1
"""


class RedisBotStateStore:
    """``{prefix}bot:<conversation>``: hash of version and data (JSON)."""

    def __init__(self, redis: Any, prefix: str = "sc:", ttl: int = STATE_TTL) -> None:
        self._redis = redis
        self._p = prefix
        self._ttl = ttl

    def _key(self, conversation_id: str) -> str:
        return f"{self._p}bot:{conversation_id}"

    def load(self, conversation_id: str) -> "Deferred[BotState | None]":
        d: Deferred[Any] = self._redis.execute("HMGET", self._key(conversation_id), "version", "data")

        def parse(reply: Any) -> BotState | None:
            if not reply or reply[0] is None or reply[1] is None:
                return None
            return BotState.from_json(str(reply[1]), int(reply[0]))

        return d.addCallback(parse)

    def save(self, state: BotState) -> "Deferred[bool]":
        d: Deferred[Any] = self._redis.eval(SAVE, [], [
            self._key(state.conversation_id), str(state.version - 1), str(state.version), state.to_json(), self._ttl,
        ])
        return d.addCallback(lambda r: int(r) == 1)
