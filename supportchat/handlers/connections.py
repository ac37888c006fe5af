"""Local connections of this node, and delivery of bus frames to them."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Protocol

from supportchat.auth import Principal
from supportchat.bus.interfaces import Delivery
from supportchat.storage.models import new_id


def encode(frame: dict[str, Any]) -> str:
    """The wire form of a server frame: always encodable as UTF-8. Text that
    is not valid Unicode (a lone surrogate; parsing refuses it, this is the
    last line) goes out as a JSON escape rather than failing the send."""
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(frame, separators=(",", ":"), ensure_ascii=True)
    return text


class Transport(Protocol):
    """What a session needs from the WebSocket edge."""

    def send_text(self, payload: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class ClientSession:
    """One authenticated connection. Frames to it are held back until the
    ``hello`` has gone out, so ``hello`` is always first."""

    def __init__(self, principal: Principal, transport: Transport) -> None:
        self.id = new_id("s")
        self.principal = principal
        self.transport = transport
        self.ready = False
        self.closed = False
        self._held: list[str] = []
        self.sent = 0
        # The agent's team, learnt at hello (workflow): team-scoped
        # deliveries (the inbox) reach the staff of that team only.
        self.team: str | None = None

    @property
    def user_id(self) -> str:
        """The principal key (not the token's ``sub``): what stores,
        presence and deliveries know this user by."""
        return self.principal.key

    @property
    def role(self) -> str:
        return self.principal.role

    def send(self, frame: dict[str, Any]) -> None:
        self.send_encoded(encode(frame))

    def send_encoded(self, payload: str) -> None:
        if self.closed:
            return
        if not self.ready:
            self._held.append(payload)
            return
        self.sent += 1
        self.transport.send_text(payload)

    def open_with(self, hello: dict[str, Any]) -> None:
        """Send ``hello`` then everything held back while it was built."""
        if self.closed:
            return
        self.ready = True
        self.send(hello)
        held, self._held = self._held, []
        for payload in held:
            self.send_encoded(payload)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.transport.close(code, reason)


class ConnectionRegistry:
    """Sessions on this node by principal key and by role."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._by_user: dict[str, dict[str, ClientSession]] = {}
        self._by_role: dict[str, dict[str, ClientSession]] = {}
        self._on_change = on_change
        self._count = 0  # kept, not counted: len() runs on every open and close
        self.delivered = 0

    def add(self, session: ClientSession) -> None:
        group = self._by_user.setdefault(session.user_id, {})
        if session.id not in group:
            self._count += 1
        group[session.id] = session
        self._by_role.setdefault(session.role, {})[session.id] = session
        self._changed()

    def remove(self, session: ClientSession) -> None:
        for index, key in ((self._by_user, session.user_id), (self._by_role, session.role)):
            group = index.get(key)
            if group is not None:
                if group.pop(session.id, None) is not None and index is self._by_user:
                    self._count -= 1
                if not group:
                    del index[key]
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._count)

    def __len__(self) -> int:
        return self._count

    def sessions(self) -> list[ClientSession]:
        return [s for g in self._by_user.values() for s in g.values()]

    def for_user(self, user_id: str) -> Iterable[ClientSession]:
        return list(self._by_user.get(user_id, {}).values())

    def deliver(self, delivery: Delivery) -> int:
        """Push the frame to every matching local session; returns how many."""
        targets: dict[str, ClientSession] = {}
        for uid in delivery.user_ids:
            targets.update(self._by_user.get(uid, {}))
        for role in delivery.roles:
            for sid, session in self._by_role.get(role, {}).items():
                if delivery.team is None or role == "admin" or session.team == delivery.team:
                    targets[sid] = session
        targets.pop(delivery.exclude_connection or "", None)
        if not targets:
            return 0
        payload = encode(delivery.frame)
        for session in targets.values():
            session.send_encoded(payload)
        self.delivered += len(targets)
        return len(targets)
