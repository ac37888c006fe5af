"""The email service (``email`` in the service tree): every
``poll_interval`` seconds on the injected clock it turns new log entries of
subscribed conversations into outbox emails, then sends the due ones
through the :class:`~supportchat.email.sender.EmailSender`. A failed send
stays in the outbox and is retried after ``retry_min_delay`` doubling up
to ``retry_max_delay`` (with jitter); after ``retry_for`` seconds it is
dead. Settled emails (sent, dead, cancelled) are deleted a week after
their last attempt (their bodies hold the conversation). Work runs through :class:`~supportchat.background.BackgroundTasks`;
stopping waits for the round in flight."""

from __future__ import annotations

import random
from email.utils import parseaddr
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.background import BackgroundTasks
from supportchat.email.compose import as_bytes, compose_reply, compose_transcript, unsubscribe_url
from supportchat.email.sender import EmailSender
from supportchat.email.store import SqlEmailStore, Subscription
from supportchat.metrics import Metrics
from supportchat.polling import PolledService
from supportchat.storage.models import Message

log = Logger()

PURGE_EVERY = 3600.0  # settled emails are deleted this often...
KEEP = 7 * 86400.0  # ...once their last attempt is this old


class EmailDispatcher(PolledService):
    name_of_round = "email_dispatch"

    def __init__(self, clock: IReactorTime, store: SqlEmailStore, sender: EmailSender, metrics: Metrics,
                 background: BackgroundTasks, *, from_addr: str, public_url: str, secret: str,
                 attachment_url: Callable[[str], str] | None = None, poll_interval: float = 5.0,
                 retry_min_delay: float = 60.0, retry_max_delay: float = 3600.0, retry_for: float = 172800.0,
                 rng: random.Random | None = None) -> None:
        super().__init__(clock, background, poll_interval, retry_min_delay, retry_max_delay, rng)
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self._from = from_addr
        self._envelope_from = parseaddr(from_addr)[1] or from_addr
        self._domain = self._envelope_from.rpartition("@")[2] or "localhost"
        self._public_url = public_url
        self._secret = secret
        self._attachment_url = attachment_url or (
            lambda a: f"{public_url.rstrip('/')}/api/v1/attachments/{a}")
        self._retry_for = retry_for
        self._purged_at = -PURGE_EVERY

    # -- one round --

    def _unsubscribe(self, sub: Subscription) -> str:
        return unsubscribe_url(self._public_url, self._secret, sub.conversation_id)

    def _reply(self, sub: Subscription, m: Message) -> tuple[str, bytes]:
        msg = compose_reply(m, lang=sub.lang, from_addr=self._from, to_addr=sub.address, domain=self._domain,
                            attachment_url=self._attachment_url, unsubscribe=self._unsubscribe(sub),
                            thread_root=sub.thread_root, thread_last=sub.thread_last, now=self._clock.seconds())
        return str(msg["Message-ID"]), as_bytes(msg)

    def _transcript(self, sub: Subscription, messages: list[Message]) -> tuple[str, bytes]:
        msg = compose_transcript(messages, lang=sub.lang, from_addr=self._from, to_addr=sub.address,
                                 domain=self._domain, attachment_url=self._attachment_url,
                                 unsubscribe=self._unsubscribe(sub), thread_root=sub.thread_root,
                                 thread_last=sub.thread_last, conversation_id=sub.conversation_id,
                                 now=self._clock.seconds())
        return str(msg["Message-ID"]), as_bytes(msg)

    async def round(self) -> None:
        """Queue what the log asks for, then send what is due, one at a time."""
        now = self._clock.seconds()
        if now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            await self._store.purge(now - KEEP)
        await self._store.derive(now, self._reply, self._transcript)
        for out in await self._store.due(now):
            if not self.running:
                return
            try:
                await self._sender.send(self._envelope_from, out.recipient, out.body)
            except Exception as e:
                attempts = out.attempts + 1
                at = self._clock.seconds()
                dead = at - out.created_at >= self._retry_for
                await self._store.failed(out.email_id, at + self.backoff(attempts), str(e), dead)
                outcome = "dead" if dead else "failed"
                self._metrics.emails.labels(kind=out.kind, outcome=outcome).inc()
                log.warn("email {email_id} ({kind}) {outcome} after {attempts} attempts: {error}",
                         email_id=out.email_id, kind=out.kind, outcome=outcome, attempts=attempts,
                         error=type(e).__name__)
                continue
            await self._store.sent(out.email_id, self._clock.seconds())
            self._metrics.emails.labels(kind=out.kind, outcome="sent").inc()
