"""An external bot or LLM service over HTTP, asked when local knowledge has
no confident answer.

``POST <url>`` with the conversation context as JSON; headers
``X-Supportchat-Timestamp`` (seconds) and ``X-Supportchat-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>." + body with the shared secret>``.
A 200 answer is ``{"reply": "...", "quick_replies": [{"label", "text"}],
"handoff": false}`` (every key optional). Each attempt is bounded by
``timeout``; connection errors, timeouts and 5xx are retried up to
``retries`` times with a short backoff, anything else is final. Failure
is ``None``: the caller falls back to local knowledge or hands off.

The HTTP client is injected (treq's ``HTTPClient``; tests use
``treq.testing.StubTreq``). The server builds it on an ``Agent`` with
``BrowserLikePolicyForHTTPS``, so https:// certificates and host names
are verified (service-identity). Bodies and the secret are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from supportchat.bot.engine import ExternalAnswer
from supportchat.bot.knowledge import QuickReply

log = Logger()

SIGNATURE_HEADER = "X-Supportchat-Signature"
TIMESTAMP_HEADER = "X-Supportchat-Timestamp"


class ExternalBot(Protocol):
    def ask(self, context: dict[str, Any]) -> "Deferred[ExternalAnswer | None]":
        """The service's answer, or None when it failed or timed out."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class _Retry(Exception):
    pass


class HttpExternalBot:
    def __init__(self, clock: IReactorTime, client: Any, url: str, secret: str, timeout: float = 3.0,
                 retries: int = 1, backoff: float = 0.2) -> None:
        self._clock = clock
        self._client = client
        self._url = url
        self._secret = secret.encode("utf-8")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self.attempts = 0
        self.failures = 0

    def ask(self, context: dict[str, Any]) -> "Deferred[ExternalAnswer | None]":
        return Deferred.fromCoroutine(self._ask(context))

    async def _ask(self, context: dict[str, Any]) -> ExternalAnswer | None:
        body = json.dumps(context, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        for attempt in range(self._retries + 1):
            if attempt:
                await deferLater(self._clock, self._backoff * attempt, lambda: None)
            self.attempts += 1
            timestamp = str(int(self._clock.seconds()))
            headers = {
                "Content-Type": ["application/json"],
                TIMESTAMP_HEADER: [timestamp],
                SIGNATURE_HEADER: [sign(self._secret, timestamp, body)],
            }
            d = Deferred.fromCoroutine(self._once(body, headers))
            d.addTimeout(self._timeout, self._clock)
            try:
                return await d
            except _Retry as e:
                log.warn("external bot answered {status}; attempt {n}", status=str(e), n=attempt + 1)
            except ValueError:
                log.warn("external bot sent an unusable answer")
                break
            except Exception as e:
                log.warn("external bot unreachable ({error}); attempt {n}", error=type(e).__name__, n=attempt + 1)
        self.failures += 1
        return None

    async def _once(self, body: bytes, headers: dict[str, list[str]]) -> ExternalAnswer | None:
        response = await self._client.post(self._url, data=body, headers=headers)
        content = await response.content()
        if response.code >= 500:
            raise _Retry(str(response.code))
        if response.code != 200:
            raise ValueError(f"status {response.code}")
        return parse_answer(json.loads(content.decode("utf-8")))


def parse_answer(data: Any) -> ExternalAnswer:
    if not isinstance(data, dict):
        raise ValueError("not an object")
    reply = data.get("reply")
    if reply is not None and not isinstance(reply, str):
        raise ValueError("reply must be a string")
    quick = []
    for q in data.get("quick_replies") or []:
        if isinstance(q, dict) and isinstance(q.get("label"), str) and isinstance(q.get("text"), str):
            quick.append(QuickReply(q["label"], q["text"]))
    return ExternalAnswer(reply or None, tuple(quick), bool(data.get("handoff", False)))
