"""Test helpers for hostile input: a whole node's handlers and URL tree on a
fake reactor with synchronous storage (real SQLite through a threadless
``Database``, or the in-memory twins), whose group commit can be held so
several users' appends share one batch; sessions whose transport encodes
like the real WebSocket edge; REST requests rendered through the real URL
tree with twisted.web's test request."""

from __future__ import annotations

import base64
import json
import os
import time
from io import BytesIO
from typing import Any, Callable

import txaio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from supportchat.auth import Principal
from supportchat.handlers.connections import ClientSession
from supportchat.server import SupportChatServer
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine
from supportchat.wire.frames import FrameError, parse_frame
from tests.support import make_config


class InlineThreadPool:
    """Runs "thread" work at once (password hashing in the REST handlers)."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], f: Callable[..., Any],
                                 *args: Any, **kwargs: Any) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
            return
        on_result(True, result)


class FakeReactor(Clock):
    """A Clock that also runs thread callbacks inline."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(1_800_000_000)
        self._pool = InlineThreadPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> InlineThreadPool:
        return self._pool


class HeldDatabase(Database):
    """A threadless Database whose group-commit transactions (``append_batch``)
    wait while ``hold`` is set, so appends sent meanwhile share the next batch."""

    def __init__(self, engine: Any, reactor: Any) -> None:
        super().__init__(engine, reactor, threadless=True)
        self.hold = False
        self._held: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = []
        self.descs: list[str] = []

    def run_interaction(self, desc: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.descs.append(desc)
        if self.hold and desc == "append_batch":
            d: Deferred[Any] = Deferred()
            self._held.append((d, lambda: super(HeldDatabase, self).run_interaction(desc, fn, *args, **kwargs)))
            return d
        return super().run_interaction(desc, fn, *args, **kwargs)

    def release(self) -> None:
        self.hold = False
        while self._held:
            d, run = self._held.pop(0)
            run().chainDeferred(d)


class Transport:
    """What the WebSocket edge does with a payload: UTF-8 encode it (strict,
    as ``ChatServerProtocol.send_text`` does) and send it."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.closed: tuple[int, str] | None = None

    def send_text(self, payload: str) -> None:
        data = payload.encode("utf-8")  # raises for text that is not valid Unicode
        text = data.decode("utf-8")
        self.frames.append(json.loads(text) if text.startswith("{") else text)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == kind]

    def errors(self) -> list[dict[str, Any]]:
        return self.of_type("error")


class ErrorLog:
    """Collects logged failures and error-level events while installed."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def install(self, testcase: Any) -> "ErrorLog":
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)
        return self


def keyring_json() -> str:
    """An inline profile keyring (so profile routes work, as configured)."""
    return json.dumps({"active": "k1", "keys": {"k1": base64.b64encode(os.urandom(32)).decode()}})


class Node:
    """One node's chat router and URL tree over synchronous storage."""

    def __init__(self, testcase: Any, storage: str = "sqlite") -> None:
        self.reactor = FakeReactor()
        data_dir = testcase.mktemp()
        os.makedirs(data_dir)
        self.config = make_config(data_dir, profile={"keyring": keyring_json()})
        saved_loop = getattr(txaio.config, "loop", None)
        self.server = SupportChatServer(self.reactor, self.config, roles=("persister",))
        testcase.addCleanup(setattr, txaio.config, "loop", saved_loop)
        self.db: HeldDatabase | None = None
        if storage == "sqlite":
            self.db = HeldDatabase(SqliteEngine(os.path.join(data_dir, "chat.sqlite3")), self.reactor)
            self.db.start()
            testcase.addCleanup(self.db.close)
            testcase.successResultOf(self.db.migrate())
            self.server._built["database"] = self.db
        else:
            from supportchat.storage.memory import MemoryConversationStore
            from supportchat.workflow.memory import MemoryWorkflowStore

            store = MemoryConversationStore()
            self.server._built["store"] = store
            self.server._built["workflow_store"] = MemoryWorkflowStore(store)
        self.router = self.server.get_handler()
        self.issuer = self.server.get_issuer()
        self._root: Any = None

    # -- WebSocket side ---------------------------------------------------
    def open(self, user: str, role: str = "customer") -> tuple[ClientSession, Transport]:
        transport = Transport()
        session = ClientSession(Principal(user, role, None), transport)
        self.router.on_open(session)
        return session, transport

    def receive(self, session: ClientSession, text: str) -> "Deferred[None]":
        """What ``ChatServerProtocol.onMessage`` does with a text frame."""
        try:
            frame = parse_frame(text, self.config.websocket.max_body_chars, self.config.chat.sync_limit_max)
        except FrameError as e:
            self.router.on_bad_frame(session, e)
            return succeed(None)
        return self.router.on_frame(session, frame)

    # -- REST side ----------------------------------------------------------
    @property
    def root(self) -> Any:
        if self._root is None:
            self._root = self.server.get_root_resource()
        return self._root

    def token(self, user: str, role: str) -> str:
        return self.issuer.mint(user, role, 3600, time.time())  # the verifier checks against the wall clock

    def rest(self, method: bytes, segments: list[bytes], args: dict[bytes, list[bytes]] | None = None,
             body: bytes = b"", headers: dict[bytes, bytes] | None = None) -> tuple[int, bytes, str]:
        """Render a request through the URL tree: (status, body, content type)."""
        request = DummyRequest(list(segments))
        request.method = method
        request.args = dict(args or {})
        request.content = BytesIO(body)
        request.uri = b"/" + b"/".join(segments)
        request.path = request.uri
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        resource = getChildForRequest(self.root, request)
        try:
            result = resource.render(request)
        except UnsupportedMethod:  # what twisted.web.server.Request answers: an HTML 405
            request.setResponseCode(405)
            request.setHeader(b"content-type", b"text/html")
            result = b"<html>Method Not Allowed</html>"
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        assert request.finished, "the request did not finish synchronously"
        ctype = request.responseHeaders.getRawHeaders(b"content-type", [b""])[0].decode("latin-1")
        return request.responseCode or 200, b"".join(request.written), ctype
