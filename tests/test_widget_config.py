"""``GET /api/v1/widget-config``: the widget's first impression without a
conversation — the bot's greeting and quick replies in every language,
business hours and whether an agent is online — cached per node; and on a
running server, public, with CORS for allowed origins and no conversation
created."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from io import BytesIO
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from supportchat.bot.knowledge import load_knowledge
from supportchat.hours import BusinessHours
from supportchat.http.widget_config import CACHE_SECONDS, WidgetConfig
from tests.support import Api, start_server, token

SATURDAY_NOON = datetime(2025, 1, 4, 12, 0, tzinfo=timezone.utc).timestamp()
MONDAY_NINE = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc).timestamp()


def get(resource: WidgetConfig, origin: bytes | None = None) -> tuple[int, Any, DummyRequest]:
    request = DummyRequest([])
    request.method = b"GET"
    request.content = BytesIO(b"")
    if origin is not None:
        request.requestHeaders.setRawHeaders(b"origin", [origin])
    result = resource.render(request)
    assert result is NOT_DONE_YET
    return request.responseCode or 200, json.loads(b"".join(request.written)), request


class WidgetConfigTests(unittest.SynchronousTestCase):
    def make(self, now: float, online: list[bool]) -> tuple[WidgetConfig, Clock, list[int]]:
        clock = Clock()
        clock.advance(now)
        calls: list[int] = []

        def agents_online() -> Any:
            calls.append(1)
            return succeed(online[0])

        async def asked() -> bool:
            return bool(await agents_online())

        return WidgetConfig(clock, load_knowledge(), BusinessHours(["mon-fri 09:00-18:00"]), asked,
                            ["https://shop.example"]), clock, calls

    def test_after_hours_with_greeting_in_every_language(self) -> None:
        """On a Saturday: the greeting in en and zh, the quick replies with their
        other languages, closed, open again on Monday 09:00, nobody online."""
        resource, _, _ = self.make(SATURDAY_NOON, [False])
        code, body, request = get(resource, b"https://shop.example")
        self.assertEqual(code, 200)
        self.assertEqual(set(body["greeting"]), {"en", "zh"})
        self.assertEqual(body["quick_replies"][2]["i18n"]["zh"], {"label": "转人工", "text": "人工"})
        self.assertEqual((body["open_now"], body["next_open"], body["agents_online"]), (False, MONDAY_NINE, False))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://shop.example"])

    def test_cached_for_a_few_seconds(self) -> None:
        """Page views within CACHE_SECONDS share one answer (one look at the agents)."""
        online = [False]
        resource, clock, calls = self.make(MONDAY_NINE + 60, online)
        self.assertFalse(get(resource)[1]["agents_online"])
        online[0] = True
        self.assertFalse(get(resource)[1]["agents_online"])
        self.assertEqual(len(calls), 1)
        clock.advance(CACHE_SECONDS)
        body = get(resource)[1]
        self.assertEqual((body["agents_online"], body["open_now"], body["next_open"]), (True, True, None))
        self.assertEqual(len(calls), 2)


class WidgetConfigServerTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_public_and_creates_no_conversation(self) -> Any:
        """No token needed, the bot's greeting given; no conversation is
        created by asking (the admin's inbox stays empty); GET only."""
        running = yield start_server(self, bot={"enabled": True})
        api = Api(running.port)
        for _ in range(3):
            code, body = yield api.call("GET", "/widget-config", None)
            self.assertEqual(code, 200)
        self.assertIn("zh", body["greeting"])
        self.assertIs(body["agents_online"], False)
        code, inbox = yield api.call("GET", "/inbox", token("boss", "admin"))
        self.assertEqual((code, inbox["conversations"]), (200, []))
        code, body = yield api.call("POST", "/widget-config", None, {})
        self.assertEqual(code, 405)

    @inlineCallbacks
    def test_email_tells_whether_the_offline_form_is_offered(self) -> Any:
        """`email` is false by default and true with [email] enabled (the widget offers its offline form)."""
        running = yield start_server(self)
        code, body = yield Api(running.port).call("GET", "/widget-config", None)
        self.assertEqual((code, body["email"]), (200, False))
        running = yield start_server(self, email={"enabled": True, "from_address": "help@example.com"})
        code, body = yield Api(running.port).call("GET", "/widget-config", None)
        self.assertEqual((code, body["email"]), (200, True))
