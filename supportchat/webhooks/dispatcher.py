"""The webhook dispatcher: a service that reads the durable log and POSTs
each endpoint's events, at least once and in ``seq`` order per conversation.

Every ``poll_interval`` seconds (on the injected clock) it lists the
endpoints and starts a round for each one that is not paused and not
already in a round, so a slow or hanging receiver only delays itself.
A round asks the store for the conversations with entries after the
endpoint's cursor whose retry is due, and works through up to
``concurrency`` of them at once; inside a conversation one event at a
time, in ``seq`` order: a 2xx moves the cursor past it (with the attempt,
in one transaction); a failure records the attempt and sets the
conversation's next try (exponential backoff with jitter, between
``retry_min_delay`` and ``retry_max_delay``), so the later events of that
conversation wait; once ``retry_for`` seconds have passed since its first
failure the event is dead (recorded, counted, the cursor moves on; replay
sends it again). ``410 Gone`` pauses the endpoint. A crash at any point
loses nothing: the cursor only moves after the receiver's answer is
recorded, so the worst case is sending that one event again.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import Delivery, MessageBus
from supportchat.metrics import Metrics
from supportchat.polling import PolledService
from supportchat.webhooks.client import DeliveryError, Response, TargetRefused, WebhookClient
from supportchat.webhooks.events import Event, headers_for, to_event
from supportchat.webhooks.store import Attempt, Endpoint, Pending, SqlOutbox, SqlWebhookStore, attempt_id

log = Logger()

PAGE = 50  # log entries read at a time per conversation
PENDING_LIMIT = 200  # conversations (or outbox events) looked at per round
PURGE_EVERY = 3600.0  # outbox events older than retry_for and this are removed, this often
WAKE_DELAY = 0.05  # a delivery on the bus brings the next round this close, at most
RECENT = 600.0  # a round looks at conversations active this recently...
SWEEP = 600.0  # ...and this often at all of them
KEEP_ATTEMPTS = 30 * 86400.0  # the deliveries list reaches back this far (or retry_for, if longer)
OUTBOX_TYPES = ("note.created", "conversation.rated", "customer.updated", "customer.erased")


class WebhookDispatcher(PolledService):
    name_of_round = "webhook_dispatch"

    def __init__(self, clock: IReactorTime, store: SqlWebhookStore, client: WebhookClient, metrics: Metrics,
                 background: BackgroundTasks, *, poll_interval: float = 1.0, retry_min_delay: float = 10.0,
                 retry_max_delay: float = 3600.0, retry_for: float = 86400.0, concurrency: int = 4,
                 rng: random.Random | None = None, outbox: SqlOutbox | None = None,
                 bus: MessageBus | None = None) -> None:
        """``bus``: on the embedded node, where a published message is already
        in SQL, its deliveries wake the dispatcher (at most every WAKE_DELAY
        seconds) instead of waiting for the next poll."""
        super().__init__(clock, background, poll_interval, retry_min_delay, retry_max_delay, rng)
        self._store = store
        self._client = client
        self._metrics = metrics
        self._retry_for = retry_for
        self._concurrency = concurrency
        self._outbox_store = outbox
        self._purged_at = -PURGE_EVERY
        self._busy: set[str] = set()
        self._swept: dict[str, float] = {}  # endpoint -> when its last full scan started
        self._gone: set[str] = set()
        self._bus = bus
        self._unsubscribe: Callable[[], None] | None = None
        self._has_endpoints = False
        self._wakes = 0  # deliveries seen that asked for a round
        self._tick_wakes = 0  # ... when the current tick or round started

    # -- service --

    def startService(self) -> None:
        if self._bus is not None:
            self._unsubscribe = self._bus.subscribe(self._delivered)
        super().startService()

    def stopService(self) -> "Deferred[Any]":
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        return super().stopService()

    def _delivered(self, delivery: Delivery) -> None:
        """A bus delivery (on the message's path: kept to a few comparisons)."""
        if self._has_endpoints and delivery.frame.get("type") == "message":
            self._wakes += 1
            call = self._call
            if call is not None and call.active() and call.getTime() > self._clock.seconds() + WAKE_DELAY:
                call.reset(WAKE_DELAY)

    def _started_round(self) -> None:
        self._tick_wakes = self._wakes

    def next_delay(self) -> float:
        """Soon again when deliveries asked for a round meanwhile, else the poll interval."""
        return WAKE_DELAY if self._wakes != self._tick_wakes else self._poll

    async def round(self) -> None:
        self._gone.clear()
        endpoints = await self._store.endpoints()
        self._has_endpoints = bool(endpoints)
        now = self._clock.seconds()
        if now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            await self._store.purge_attempts(now - max(KEEP_ATTEMPTS, self._retry_for + PURGE_EVERY))
            if self._outbox_store is not None:
                await self._outbox_store.purge(now - self._retry_for - PURGE_EVERY)
        for endpoint in endpoints:
            if endpoint.paused or endpoint.id in self._busy or not self.running:
                continue
            self._busy.add(endpoint.id)
            d = self._background.run(f"webhook_round {endpoint.id}",
                                     lambda e=endpoint: Deferred.fromCoroutine(self._round(e)))
            d.addBoth(self._free, endpoint.id, self._wakes)
            self._track(d)

    def _free(self, result: Any, endpoint_id: str, wakes: int) -> Any:
        self._busy.discard(endpoint_id)
        if self._wakes != wakes:  # messages came while it was busy: another round soon
            call = self._call
            if call is not None and call.active() and call.getTime() > self._clock.seconds() + WAKE_DELAY:
                call.reset(WAKE_DELAY)
        return result

    # -- one endpoint --

    async def _round(self, endpoint: Endpoint) -> None:
        now = self._clock.seconds()
        if not any(t not in OUTBOX_TYPES for t in endpoint.events):
            pending = []  # nothing of the message log is subscribed: leave its cursors alone
        else:
            # Conversations active in the last RECENT seconds, and every SWEEP
            # seconds all of them since the endpoint's registration (entries
            # that reached SQL late: a persister's backlog, a retried commit).
            full = now - self._swept.get(endpoint.id, -SWEEP) >= SWEEP
            if full:
                self._swept[endpoint.id] = now
            pending = await self._store.pending(endpoint, now, PENDING_LIMIT, 0.0 if full else now - RECENT)
        self._metrics.webhook_pending.labels(endpoint.id).set(len(pending))
        if pending:
            limit = DeferredSemaphore(self._concurrency)
            runs = [limit.run(self._conversation, endpoint, p) for p in pending]
            results = await DeferredList(runs, consumeErrors=True)
            for ok, value in results:
                if not ok:
                    log.failure("webhook {endpoint} conversation failed", value, endpoint=endpoint.id)
        if any(t in OUTBOX_TYPES for t in endpoint.events):
            await self._outbox(endpoint, set())

    def _stopped(self, endpoint: Endpoint) -> bool:
        return not self.running or endpoint.id in self._gone

    async def _conversation(self, endpoint: Endpoint, pending: Pending) -> None:
        conv = pending.conversation_id
        cursor, attempts, first = pending.delivered_seq, pending.attempts, pending.first_failed_at
        while not self._stopped(endpoint):
            entries = await self._store.entries(conv, cursor, endpoint.since_ts, PAGE)
            skip: int | None = None
            for message in entries:
                event = to_event(message) if message.ts >= endpoint.since_ts else None
                if event is None or event.type not in endpoint.events:
                    skip = message.seq
                    continue
                if skip is not None:
                    await self._store.advance(endpoint.id, conv, skip)
                    cursor, skip = skip, None
                if self._stopped(endpoint):
                    return
                if not await self._deliver(endpoint, event, cursor, attempts, first):
                    return
                cursor, attempts, first = event.seq, 0, None
            if skip is not None:
                await self._store.advance(endpoint.id, conv, skip)
                cursor = skip
            if len(entries) < PAGE:
                return

    async def _deliver(self, endpoint: Endpoint, event: Event, cursor: int, attempts: int,
                       first: float | None) -> bool:
        """One attempt of a log event; True when the conversation may go on to its next event."""
        conv, store = event.conversation_id, self._store
        return await self._attempt(
            endpoint, event, attempts, first,
            delivered=lambda a: store.advance(endpoint.id, conv, event.seq, a),
            failed=lambda a, n, f, at: store.failed(a, cursor, n, f, at),
            dead=lambda a: store.advance(endpoint.id, conv, event.seq, a))

    async def _outbox(self, endpoint: Endpoint, blocked: set[str]) -> None:
        """Outbox events (notes, ratings) in order; a conversation whose event
        waits for a retry holds its later ones back."""
        outbox = self._outbox_store
        if outbox is None:
            return
        for item in await outbox.pending(endpoint, self._clock.seconds(), PENDING_LIMIT):
            if self._stopped(endpoint):
                return
            key = item.conversation_id or "customer:" + item.subject  # what keeps its order
            if key in blocked or item.attempts < 0:
                blocked.add(key)
                continue
            event = Event(item.event_id, item.event_type, item.conversation_id, 0, item.created_at, item.body)
            event_id = item.event_id  # the callbacks run before the next iteration
            ok = await self._attempt(
                endpoint, event, item.attempts, item.first_failed_at,
                delivered=lambda a: outbox.settle(endpoint.id, event_id, a, True),
                failed=lambda a, n, f, at: outbox.settle(endpoint.id, event_id, a, False, n, f, at),
                dead=lambda a: outbox.settle(endpoint.id, event_id, a, True))
            if not ok:
                blocked.add(key)

    async def _attempt(self, endpoint: Endpoint, event: Event, attempts: int, first: float | None,
                       delivered: Callable[[Attempt], "Deferred[None]"],
                       failed: Callable[[Attempt, int, float, float], "Deferred[None]"],
                       dead: Callable[[Attempt], "Deferred[None]"]) -> bool:
        """One attempt; True when what follows it may go."""
        now = self._clock.seconds()
        headers = headers_for(event, endpoint.secrets(now), int(now))
        number = attempts + 1
        response: Response | None = None
        error: str | None = None
        outcome = "failed"
        try:
            response = await self._client.post(endpoint.url, headers, event.body)
        except TargetRefused as e:
            outcome, error = "refused", str(e)[:200]
        except DeliveryError as e:
            error = str(e)[:200] or type(e).__name__
        except Exception as e:  # the client's own bug must not stop the dispatcher
            log.failure("webhook client failed")
            error = type(e).__name__
        done = self._clock.seconds()

        def attempt(result: str) -> Attempt:
            return Attempt(
                id=attempt_id(done), endpoint_id=endpoint.id, event_id=event.id, event_type=event.type,
                conversation_id=event.conversation_id, seq=event.seq, attempt=number, ts=done, outcome=result,
                status_code=response.status if response is not None else None,
                latency=response.seconds if response is not None else None, error=error,
                response_excerpt=response.excerpt if response is not None else None)

        counter = self._metrics.webhook_deliveries
        if response is not None and 200 <= response.status < 300:
            await delivered(attempt("delivered"))
            counter.labels(endpoint.id, "delivered").inc()
            self._metrics.webhook_lag.observe(max(0.0, done - event.created_at))
            return True
        first = now if first is None else first
        if response is not None and response.status == 410:
            self._gone.add(endpoint.id)
            await failed(attempt("gone"), number, first, done)
            await self._store.pause(endpoint.id, "gone")
            counter.labels(endpoint.id, "gone").inc()
            log.warn("webhook endpoint {endpoint} answered 410 Gone: paused", endpoint=endpoint.id)
            return False
        if done - first >= self._retry_for:
            await dead(attempt("dead"))
            counter.labels(endpoint.id, "dead").inc()
            log.warn("webhook event {event} to {endpoint} is dead after {n} attempts", event=event.id,
                     endpoint=endpoint.id, n=number)
            return True
        await failed(attempt(outcome), number, first, done + self.backoff(number))
        counter.labels(endpoint.id, outcome).inc()
        return False
