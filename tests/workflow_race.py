"""The assignment race driver shared by the embedded and the Redis-mode
race tests: many customers, agents going on and offline, agents closing
what they get; records every agent's load as it sees it."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from tests.support import close_client, connect, token


class RaceAgent:
    """One agent's client: counts what is assigned to it, closes it soon after."""

    def __init__(self, client: Any, agent_id: str, capacity: int, rng: random.Random) -> None:
        self.client = client
        self.id = agent_id
        self.capacity = capacity
        self.rng = rng
        self.held: set[str] = set()
        self.max_load = 0
        self.assigned: list[tuple[str, int]] = []  # (conversation, seq of the assigned event)
        self.closed: list[str] = []
        self._seen = 0

    def poll(self) -> None:
        frames = self.client.frames
        while self._seen < len(frames):
            frame = frames[self._seen]
            self._seen += 1
            if not isinstance(frame, dict):
                continue
            event = frame.get("event") or {}
            if frame.get("type") == "message" and event.get("name") == "assigned" and event["user"]["id"] == self.id:
                conv = frame["conversation"]
                self.assigned.append((conv, frame["seq"]))
                self.held.add(conv)
                self.max_load = max(self.max_load, len(self.held))
                reactor.callLater(self.rng.uniform(0, 0.03), self.close, conv)
            elif frame.get("type") == "closed":
                self.closed.append(frame["conversation"])

    def close(self, conv: str) -> None:
        # The load drops when close is sent: the server cannot free the slot earlier.
        self.held.discard(conv)
        self.client.send({"type": "close", "conversation": conv})


@inlineCallbacks
def run_race(ports: list[int], conversations: int, agents: int, capacity: int, seed: int = 7) -> Any:
    """Returns (race agents, conversation ids). Agents 0, 4, 8... go offline
    and back online a few times while the queue drains."""
    rng = random.Random(seed)
    crew: list[RaceAgent] = []
    for i in range(agents):
        client = yield connect(ports[i % len(ports)], token(f"agent{i}", "agent", name=f"Agent {i}"))
        crew.append(RaceAgent(client, f"agent{i}", capacity, rng))
    customers = []
    convs: list[str] = []
    for batch in range(0, conversations, 50):
        started = []
        for j in range(batch, min(batch + 50, conversations)):
            c = yield connect(ports[j % len(ports)], token(f"cust{j}"))
            c.send({"type": "start", "ref": "s"})
            customers.append(c)
            started.append(c.next_frame("conversation"))
        for frame in (yield gatherResults(started)):
            convs.append(frame["conversation"]["id"])
    for a in crew:
        a.client.send({"type": "status", "status": "online"})

    toggles = [0]

    def toggle() -> None:
        if toggles[0] >= 6:
            return
        toggles[0] += 1
        for a in crew[::4]:
            a.client.send({"type": "status", "status": "offline" if toggles[0] % 2 else "online"})

    flapper = task.LoopingCall(toggle)
    flapper.clock = reactor
    flapper.start(0.15, now=False)
    try:
        for _ in range(1200):  # bounded: 120 s
            for a in crew:
                a.poll()
            if sum(len(a.closed) for a in crew) >= conversations:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
    finally:
        if flapper.running:
            flapper.stop()
    for a in crew:
        a.poll()
    yield gatherResults([close_client(c) for c in customers] + [close_client(a.client) for a in crew])
    return crew, convs


LIFECYCLE = ["created", "queued", "assigned", "closed"]


def lifecycle_logs(db_path: str) -> dict[str, list[str]]:
    """Each conversation's lifecycle event names in seq order, from SQL."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT conversation_id, data FROM messages WHERE kind = 'event' ORDER BY conversation_id, seq")
        out: dict[str, list[str]] = {}
        for conv, data in rows:
            out.setdefault(conv, []).append(json.loads(data).get("name"))
        return out
    finally:
        db.close()


def check_race(testcase: Any, crew: list[RaceAgent], convs: list[str], queued_left: int,
               logs: dict[str, list[str]]) -> dict[str, Any]:
    """The race invariants; returns the figures for the report."""
    by_conv: dict[str, list[str]] = {}
    for a in crew:
        for conv, seq in a.assigned:
            by_conv.setdefault(conv, []).append(f"{a.id}@{seq}")
    duplicates = {c: who for c, who in by_conv.items() if len(who) != 1}
    figures = {
        "conversations": len(convs), "agents": len(crew),
        "max_load": max(a.max_load for a in crew), "capacity": crew[0].capacity,
        "duplicates": len(duplicates), "assigned": len(by_conv),
        "closed": sum(len(a.closed) for a in crew), "queued_left": queued_left,
        "logs_in_order": sum(1 for c in convs if logs.get(c) == LIFECYCLE),
    }
    testcase.assertEqual(duplicates, {}, "a conversation was assigned more than once")
    testcase.assertEqual(set(by_conv), set(convs), "not every conversation was assigned")
    for a in crew:
        testcase.assertLessEqual(a.max_load, a.capacity, f"{a.id} went over capacity")
    testcase.assertEqual(figures["closed"], len(convs))
    testcase.assertEqual(queued_left, 0, "the queue did not drain")
    disordered = {c: logs.get(c) for c in convs if logs.get(c) != LIFECYCLE}
    testcase.assertEqual(disordered, {}, f"logs must read {LIFECYCLE}")
    return figures


__all__ = ["Deferred", "RaceAgent", "check_race", "lifecycle_logs", "run_race"]
