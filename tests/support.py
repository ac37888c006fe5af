"""Test helpers: an in-process server on real sockets, a WebSocket chat
client, a raw HTTP handshake, and a subprocess server for restart tests."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponse, PerMessageDeflateResponseAccept
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.filepath import FilePath

from supportchat.app.services import build_service
from supportchat.auth import TokenIssuer
from supportchat.config import load_config
from supportchat.server import SupportChatServer
from supportchat.ws.protocol import ReactorTimer

SECRET = "test-secret-" + "x" * 40
TIMEOUT = 15.0
REPO = FilePath(__file__).parent().parent()


def free_port() -> int:
    """A port that was free a moment ago (for tests that must know it before listening)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(data_dir: str, **sections: dict[str, Any]) -> Any:
    """Config for tests: listen on a free port, fixed secret, high limits."""
    overrides: dict[str, dict[str, Any]] = {
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "data_dir": data_dir, "shutdown_timeout": 5.0},
        "auth": {"jwt_secret": SECRET},
        # The bot answers every new conversation; tests that want it enable it.
        "bot": {"enabled": False},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(None, environ={}, overrides=overrides)


def token(user_id: str, role: str = "customer", ttl: float = 3600, now: float | None = None, name: str | None = None) -> str:
    import time

    cfg = load_config(None, environ={}, overrides={"auth": {"jwt_secret": SECRET}})
    return TokenIssuer(cfg.auth, SECRET).mint(user_id, role, ttl, time.time() if now is None else now, name)


class RunningServer:
    """A whole server (services, SQLite, listener) in this process."""

    def __init__(self, reactor: Any, config: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.server = SupportChatServer(reactor, config)
        self.service = build_service(self.server)
        self.port = 0

    @defer.inlineCallbacks
    def start(self) -> Any:
        from supportchat.storage.database import migrate_blocking
        from supportchat.storage.engines import engine_from_url

        migrate_blocking(engine_from_url(self.config.database_url()))
        self.service.startService()
        listener = self.service.getServiceNamed("listen-0")
        seen: defer.Deferred[Any] = defer.Deferred()

        def found(port: Any) -> Any:
            seen.callback(port)
            return port  # keep it for the service's own stopService

        listener._waitingForPort.addCallback(found)
        port = yield seen
        self.port = port.getHost().port
        return self

    def stop(self) -> Any:
        return defer.maybeDeferred(self.service.stopService)

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@defer.inlineCallbacks
def start_server(testcase: Any, **sections: dict[str, Any]) -> Any:
    """Start a server for ``testcase`` and stop it at cleanup."""
    from twisted.internet import reactor

    data_dir = testcase.mktemp()
    os.makedirs(data_dir)
    running = RunningServer(reactor, make_config(data_dir, **sections))
    yield running.start()
    testcase.addCleanup(running.stop)
    return running


def is_event(frame: Any, name: str | None = None) -> bool:
    """Is ``frame`` a lifecycle event message (called ``name``)?"""
    if not isinstance(frame, dict) or frame.get("type") != "message" or frame.get("kind") != "event":
        return False
    return name is None or (frame.get("event") or {}).get("name") == name


def is_chat(frame: Any) -> bool:
    """Is ``frame`` a message that is not a lifecycle event?"""
    return isinstance(frame, dict) and frame.get("type") == "message" and frame.get("kind") != "event"


class ChatClient(WebSocketClientProtocol):
    """Collects server frames; ``next_frame`` waits for the next one of a type."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Any] = []
        self._cursor = 0
        self._waiters: list[tuple[str | None, Callable[[Any], bool] | None, defer.Deferred[Any]]] = []
        self.opened: defer.Deferred[ChatClient] = defer.Deferred()
        self.closed: defer.Deferred[tuple[bool, int | None, str | None]] = defer.Deferred()
        self.compressed_in = False

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode("utf-8")
        try:
            frame = json.loads(text)
        except ValueError:
            frame = text
        self.frames.append(frame)
        self._dispatch()

    def _dispatch(self) -> None:
        progress = True
        while progress and self._waiters:
            progress = False
            kind, where, waiter = self._waiters[0]
            for i in range(self._cursor, len(self.frames)):
                frame = self.frames[i]
                if not (kind is None or (isinstance(frame, dict) and frame.get("type") == kind) or frame == kind):
                    continue
                if where is None or where(frame):
                    self._cursor = i + 1
                    self._waiters.pop(0)
                    waiter.callback(frame)
                    progress = True
                    break

    def next_frame(self, kind: str | None = None, where: Callable[[Any], bool] | None = None) -> "defer.Deferred[Any]":
        """The next unread frame (of ``kind``, and for which ``where`` holds),
        skipping others before it."""
        from twisted.internet import reactor

        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((kind, where, d))
        self._dispatch()
        return d.addTimeout(TIMEOUT, reactor)

    def next_event(self, name: str) -> "defer.Deferred[Any]":
        """The next lifecycle ``event`` message called ``name`` (``created``,
        ``queued``, ``joined``, ``assigned``...), skipping others before it."""
        return self.next_frame("message", lambda f: is_event(f, name))

    def of_type(self, kind: str) -> list[Any]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == kind]

    def send(self, frame: Any) -> None:
        data = frame if isinstance(frame, (bytes, str)) else json.dumps(frame)
        self.sendMessage(data.encode("utf-8") if isinstance(data, str) else data)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionRefused(code, reason))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))


class ConnectionRefused(Exception):
    def __init__(self, code: Any, reason: Any) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def _deflate_offers(window_bits: int = 0) -> tuple[list[Any], Any]:
    offers = [PerMessageDeflateOffer(accept_max_window_bits=True)]

    def accept(response: Any) -> Any:
        if isinstance(response, PerMessageDeflateResponse):
            return PerMessageDeflateResponseAccept(response)
        return None

    return offers, accept


@defer.inlineCallbacks
def connect(
    port: int,
    bearer: str | None = None,
    path: str = "/ws",
    deflate: bool = True,
    origin: str | None = None,
    protocols: list[str] | None = None,
    query: str = "",
    wait_hello: bool = True,
    tls: Any = None,
) -> Any:
    """Open a chat connection; by default waits for ``hello``. With ``tls``
    (client TLS options, e.g. ``optionsForClientTLS``): ``wss://``."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import wrapClientTLS

    url = f"{'wss' if tls is not None else 'ws'}://127.0.0.1:{port}{path}{query}"
    headers = {}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    factory = WebSocketClientFactory(url, origin=origin, protocols=protocols, headers=headers, reactor=reactor)
    factory.protocol = ChatClient
    factory._batched_timer = ReactorTimer(reactor)
    options: dict[str, Any] = {"maxMessagePayloadSize": 0, "maxFramePayloadSize": 0, "failByDrop": False}
    if deflate:
        offers, accept = _deflate_offers()
        options["perMessageCompressionOffers"] = offers
        options["perMessageCompressionAccept"] = accept
    factory.setProtocolOptions(**options)
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    client = yield endpoint.connect(factory)
    yield client.opened.addTimeout(TIMEOUT, reactor)
    if wait_hello:
        yield client.next_frame("hello")
    return client


@defer.inlineCallbacks
def ask_bot(cust: ChatClient, conv: str, key: str, body: str) -> Any:
    """Send ``body`` as the customer and return the bot's next message after its ack."""
    cust.send({"type": "message", "ref": key, "conversation": conv, "client_msg_id": key, "body": body})
    ack = yield cust.next_frame("ack")
    while True:
        frame = yield cust.next_frame("message")
        if frame["sender"]["role"] == "bot" and frame["seq"] > ack["seq"]:
            return frame


@defer.inlineCallbacks
def online_agent(port: int, user_id: str, name: str | None = None) -> Any:
    """An agent connected with a token and set ``online`` (status acknowledged)."""
    agent = yield connect(port, token(user_id, "agent", name=name or user_id.title()))
    agent.send({"type": "status", "status": "online", "ref": "online"})
    yield agent.next_frame("agent_status")
    return agent


def close_client(client: ChatClient) -> "defer.Deferred[Any]":
    """Close cleanly and wait until the connection is gone."""
    from twisted.internet import reactor

    if not client.closed.called:
        client.sendClose(1000)
    return client.closed.addTimeout(TIMEOUT, reactor)


class _RawHTTP(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.done.called:
            head, _, body = self.data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(body) >= length or head.startswith(b"HTTP/1.1 101"):
                self.done.callback(self.data)
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.data)


@defer.inlineCallbacks
def raw_handshake(port: int, path: str = "/ws", headers: dict[str, str] | None = None) -> Any:
    """Send a WebSocket upgrade request; returns (status, headers, body)."""
    from twisted.internet import reactor

    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = yield endpoint.connect(protocol.Factory.forProtocol(_RawHTTP))
    proto.transport.write(request)
    data = yield proto.done.addTimeout(TIMEOUT, reactor)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    hdrs = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return status, hdrs, body


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess running this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTCHAT_")}
    env["PYTHONPATH"] = REPO.path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PYTHON = sys.executable


def http_client() -> Any:
    """treq without persistent connections, so tests leave no sockets open."""
    import treq
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class _ServerProcessProtocol(protocol.ProcessProtocol):
    def __init__(self, marker: bytes) -> None:
        self.output = b""
        self.marker = marker
        self.started: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.started.called and self.marker in self.output:
            self.started.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        if not self.started.called:
            self.started.errback(RuntimeError("server exited before listening:\n" + self.output.decode(errors="replace")))
        self.ended.callback(code)


class ServerProcess:
    """``twistd -n supportchat <role>`` as a real process."""

    def __init__(self, data_dir: str, port: int | None, extra_env: dict[str, str] | None = None,
                 role: str = "run", name: str | None = None, extra_args: list[str] | None = None,
                 marker: str | None = None) -> None:
        self.extra_args = extra_args or []
        self.marker = marker
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.role = role
        env = {"SUPPORTCHAT_AUTH_JWT_SECRET": SECRET, "SUPPORTCHAT_BOT_ENABLED": "false"}
        if name:
            env["SUPPORTCHAT_SERVER_NODE_ID"] = name
        env.update(extra_env or {})
        self.env = python_env(**env)
        self.proto: _ServerProcessProtocol | None = None

    def start(self) -> "defer.Deferred[None]":
        from twisted.internet import reactor

        marker = self.marker or (f"Site starting on {self.port}" if self.port is not None else "Persister started")
        self.proto = _ServerProcessProtocol(marker.encode())
        args = [
            PYTHON, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "supportchat", self.role, "--data-dir", self.data_dir,
        ]
        if self.port is not None:
            args += ["--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        args += self.extra_args
        reactor.spawnProcess(self.proto, PYTHON, args, env=self.env, path=REPO.path)
        return self.proto.started.addTimeout(60, reactor)

    def signal(self, name: str) -> None:
        assert self.proto is not None
        self.proto.transport.signalProcess(name)

    def ended(self) -> "defer.Deferred[int | None]":
        from twisted.internet import reactor

        assert self.proto is not None
        return self.proto.ended.addTimeout(60, reactor)

    def kill(self) -> "defer.Deferred[Any]":
        """SIGKILL if still running (cleanup)."""
        if self.proto is None or self.proto.ended.called:
            return defer.succeed(None)
        self.signal("KILL")
        return self.ended()


class Api:
    """JSON calls to a running server's REST API (``/api/v1``)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.http = http_client()

    @defer.inlineCallbacks
    def exchange(self, method: str, path: str, bearer: str | None = None, body: Any = None) -> Any:
        """(the response, its decoded JSON body or None)."""
        headers = {b"content-type": [b"application/json"]}
        if bearer:
            headers[b"authorization"] = [f"Bearer {bearer}".encode()]
        data = None if body is None else json.dumps(body).encode()
        r = yield self.http.request(method, self.base + path, headers=headers, data=data)
        text = yield r.text()
        return r, json.loads(text) if text else None

    @defer.inlineCallbacks
    def call(self, method: str, path: str, bearer: str | None = None, body: Any = None) -> Any:
        """(the status code, the decoded JSON body or None)."""
        r, data = yield self.exchange(method, path, bearer, body)
        return r.code, data
