"""Reads made together go as one: the first is sent at once; the ones asked
for while it is in flight wait and then go together as one batch. Nothing
waits on a timer, so a lone read costs what it did, and a burst (ten
thousand clients reconnecting to one gateway, each needing its ``hello``)
costs one transaction per round trip instead of one per client."""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchedReads(Generic[K, V]):
    """``get(key)`` through ``run(keys) -> {key: value}`` (every key present)."""

    def __init__(self, run: Callable[[list[K]], "Deferred[dict[K, V]]"], batch_max: int = 500) -> None:
        self._run = run
        self._batch_max = batch_max
        self._waiting: dict[K, list[Deferred[V]]] = {}
        self._in_flight = False
        self.batches = 0

    def get(self, key: K) -> "Deferred[V]":
        d: Deferred[V] = Deferred()
        self._waiting.setdefault(key, []).append(d)
        if not self._in_flight:
            self._send()
        return d

    def _send(self) -> None:
        keys = list(self._waiting)[: self._batch_max]
        waiters = {k: self._waiting.pop(k) for k in keys}
        self._in_flight = True
        self.batches += 1

        def answered(values: dict[K, V]) -> None:
            self._done()
            for key, ds in waiters.items():
                for d in ds:
                    d.callback(values[key])

        def failed(failure: Failure) -> None:
            self._done()
            for ds in waiters.values():
                for d in ds:
                    d.errback(failure)

        self._run(keys).addCallbacks(answered, failed)

    def _done(self) -> None:
        self._in_flight = False
        if self._waiting:
            self._send()
