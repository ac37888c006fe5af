"""The bus seam: publish deliveries; every node subscribes and hands them to
its local connections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Delivery:
    """A frame for every connection of some users and/or roles.

    ``exclude_connection`` skips the connection that caused it (the sender
    already has its ack). ``team`` narrows the ``roles`` part to the staff
    of that team (admins always; ``user_ids`` are not narrowed).
    ``local_only``: other nodes have it already (the chat store sent it with
    the append, see ``AppendResult.fanned_out``); deliver on this node only.
    It is not part of the JSON form."""

    frame: dict[str, Any]
    user_ids: tuple[str, ...] = ()  # principal keys (storage.models.principal_key)
    roles: tuple[str, ...] = ()
    exclude_connection: str | None = None
    team: str | None = None
    local_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "user_ids": list(self.user_ids),
            "roles": list(self.roles),
            "exclude_connection": self.exclude_connection,
            "team": self.team,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Delivery":
        return cls(
            frame=data["frame"],
            user_ids=tuple(data.get("user_ids", ())),
            roles=tuple(data.get("roles", ())),
            exclude_connection=data.get("exclude_connection"),
            team=data.get("team"),
        )


DeliveryCallback = Callable[[Delivery], None]


class MessageBus(Protocol):
    """Fan-out of deliveries to every subscribed node."""

    def publish(self, delivery: Delivery) -> "Deferred[None]": ...

    def subscribe(self, callback: DeliveryCallback) -> Callable[[], None]:
        """Register ``callback``; returns a function that unsubscribes it."""
