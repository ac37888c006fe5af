"""Clients that keep talking through fail-overs and restarts, as a well-behaved
widget would: numbered messages with a ``client_msg_id`` each, a few in
flight, ``unavailable`` retried after ``retry_after``, and after a lost
connection a reconnect (to whichever gateway answers) that resends every
message not yet acknowledged, with the same ``client_msg_id``.

Every ack is recorded; an ack for an id acknowledged before must repeat the
same message (``msg_id``), or the test fails."""

from __future__ import annotations

import time
from typing import Any, Callable

from autobahn.exception import Disconnected
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks

from tests.support import close_client, connect, token

POLL = 0.02


def pause(seconds: float = POLL) -> "Deferred[None]":
    """Yield to the reactor between polls of a condition."""
    return task.deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def until(condition: Callable[[], Any], what: str, limit: float = 30.0,
          detail: Callable[[], str] | None = None) -> Any:
    """Poll ``condition`` (bounded) until it is true; returns its value.
    ``detail`` describes the state when it times out."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}{more}")
        yield pause(0.05)


class Talker:
    """One user sending into one conversation through any gateway in ``ports()``."""

    def __init__(self, user: str, role: str, conversation: str, ports: Callable[[], list[int]],
                 prefix: str, window: int = 3, interval: float = 0.03) -> None:
        self.user = user
        self.role = role
        self.conversation = conversation
        self.ports = ports
        self.prefix = prefix
        self.window = window
        self.interval = interval
        self.client: Any = None
        self.cursor = 0
        self.sent = 0
        self.unacked: dict[str, float] = {}  # key -> when to (re)send; inf while in flight
        self.acks: dict[str, dict[str, Any]] = {}
        self.reconnects = 0
        self.refusals = 0
        self.problems: list[str] = []
        self._stop = False
        self._broken = False
        self.done: Deferred[None] = Deferred()

    def frame(self, key: str) -> dict[str, Any]:
        return {"type": "message", "ref": key, "conversation": self.conversation, "client_msg_id": key,
                "body": f"{self.user} says {key}"}

    def start(self) -> None:
        self._run().chainDeferred(self.done)

    def stop(self) -> "Deferred[None]":
        """Stop sending new messages; fires when every sent one is acknowledged."""
        self._stop = True
        return self.done

    @inlineCallbacks
    def _connect(self) -> Any:
        while True:
            for port in self.ports():
                try:
                    client = yield connect(port, token(self.user, self.role))
                except Exception:
                    continue
                return client
            yield pause(0.1)

    @inlineCallbacks
    def _run(self) -> Any:
        deadline = time.monotonic() + 150
        next_new = 0.0
        while not (self._stop and not self.unacked):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user}: {len(self.unacked)} messages never acknowledged")
            if self.client is not None:
                self._read()  # what arrived before a close counts
            if self.client is None or self.client.closed.called or self._broken:
                if self.client is not None:
                    self.reconnects += 1
                    self.client.transport.abortConnection()
                self._broken = False
                self.client = yield self._connect()
                self.cursor = 0
                for key in self.unacked:  # resend everything not acknowledged
                    self.unacked[key] = 0.0
            self._read()
            now = time.monotonic()
            for key, when in list(self.unacked.items()):
                if when <= now:
                    self._send(key)
            if not self._stop and len(self.unacked) < self.window and now >= next_new:
                key = f"{self.prefix}{self.sent}"
                self.sent += 1
                self._send(key)
                next_new = now + self.interval
            yield pause()
        yield close_client(self.client)

    def _send(self, key: str) -> None:
        self.unacked[key] = float("inf")
        if self._broken:
            self.unacked[key] = 0.0
            return
        try:
            self.client.send(self.frame(key))
        except Disconnected:  # closing under us: resend after the reconnect
            self.unacked[key] = 0.0
            self._broken = True

    def _read(self) -> None:
        frames = self.client.frames
        while self.cursor < len(frames):
            frame = frames[self.cursor]
            self.cursor += 1
            if not isinstance(frame, dict):
                continue
            if frame.get("type") == "ack":
                key = frame["client_msg_id"]
                prior = self.acks.get(key)
                if prior is not None and prior["msg_id"] != frame["msg_id"]:
                    self.problems.append(f"{key} acknowledged as {prior['msg_id']} and then as {frame['msg_id']}")
                self.acks.setdefault(key, frame)
                self.unacked.pop(key, None)
            elif frame.get("type") == "error" and frame.get("ref") in self.unacked:
                if frame.get("code") != "unavailable":
                    self.problems.append(f"{frame.get('ref')}: {frame}")
                self.refusals += 1
                self.unacked[frame["ref"]] = time.monotonic() + min(float(frame.get("retry_after") or 0.2), 1.0)


@inlineCallbacks
def synced(port: int, user: str, role: str, conversation: str) -> Any:
    """Everything a fresh connection of ``user`` gets by sync, from seq 0."""
    client = yield connect(port, token(user, role))
    messages: list[dict[str, Any]] = []
    after = 0
    while True:
        client.send({"type": "sync", "ref": f"s{after}", "conversation": conversation, "after_seq": after,
                     "limit": 500})
        history = yield client.next_frame("history", lambda f, a=after: f.get("ref") == f"s{a}")
        messages.extend(history["messages"])
        if not history["has_more"] or not history["messages"]:
            break
        after = history["messages"][-1]["seq"]
    yield close_client(client)
    return messages
