"""The in-process bus: one node, deliveries handed over synchronously."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from supportchat.bus.interfaces import Delivery, DeliveryCallback

log = Logger()


class LocalBus:
    """Calls every subscriber in order; one failing subscriber is logged
    and does not stop the others."""

    def __init__(self) -> None:
        self._subscribers: list[DeliveryCallback] = []
        self.published = 0

    def publish(self, delivery: Delivery) -> "Deferred[None]":
        self.published += 1
        for callback in list(self._subscribers):
            try:
                callback(delivery)
            except Exception:
                log.failure("delivery subscriber failed")
        return succeed(None)

    def subscribe(self, callback: DeliveryCallback) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe
