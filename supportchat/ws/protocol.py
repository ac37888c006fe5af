"""The WebSocket edge. Thin by design: decode the frame, parse it into a
typed class, hand it to the chat handler. Nothing here knows about
conversations, and the handler knows nothing of Autobahn."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.config import ChatConfig, WebSocketConfig
from supportchat.handlers.chat import ChatHandler
from supportchat.handlers.connections import ClientSession
from supportchat.ws.frames import FrameError, parse_frame

SUBPROTOCOL = "supportchat.v1"


class ChatServerProtocol(WebSocketServerProtocol):
    """One chat connection: bytes in, typed frames out; frames out, bytes in."""

    factory: "ChatServerFactory"
    principal: Principal | None = None
    session: ClientSession | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        if SUBPROTOCOL in request.protocols:
            return SUBPROTOCOL
        return None

    def onOpen(self) -> None:
        if self.principal is None:  # not built through the guard: refuse
            self.sendClose(1008, "unauthorized")
            return
        self.session = ClientSession(self.principal, self)
        self.factory.background.run("open_session", self.factory.handler.on_open, self.session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        if isBinary:
            self.factory.handler.on_bad_frame(
                session, FrameError("bad_request", "binary frames are not supported; send JSON text")
            )
            return
        text = payload.decode("utf-8")  # Autobahn has validated UTF-8 (1007 otherwise)
        try:
            frame = parse_frame(text, self.factory.max_body_chars, self.factory.sync_limit_max)
        except FrameError as e:
            self.factory.handler.on_bad_frame(session, e)
            return
        self.factory.background.run("frame", self.factory.handler.on_frame, session, frame)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.factory.handler.on_heartbeat(self.session)

    def onPing(self, payload: bytes) -> None:
        super().onPing(payload)
        if self.session is not None:
            self.factory.handler.on_heartbeat(self.session)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.factory.handler.on_close(self.session)
            self.session = None

    # -- the Transport the handler sees ---------------------------------
    def send_text(self, payload: str) -> None:
        data = payload.encode("utf-8")
        self.sendMessage(data, isBinary=False, doNotCompress=len(data) < self.factory.deflate_threshold)

    def close(self, code: int, reason: str) -> None:
        self.sendClose(code, reason)


class ChatServerFactory(WebSocketServerFactory):
    """Builds chat protocols; the HTTP guard hands over the authenticated
    principal just before the protocol is built."""

    protocol = ChatServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        handler: ChatHandler,
        background: BackgroundTasks,
        ws_config: WebSocketConfig,
        chat_config: ChatConfig,
    ) -> None:
        super().__init__(reactor=reactor)
        self.handler = handler
        self.background = background
        self.max_body_chars = ws_config.max_body_chars
        self.sync_limit_max = chat_config.sync_limit_max
        self.deflate_threshold = ws_config.deflate_threshold if ws_config.deflate else 1 << 62
        self.pending_principal: Principal | None = None

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, ChatServerProtocol)
        proto.principal = self.pending_principal
        self.pending_principal = None
        return proto


class EchoTesteeProtocol(WebSocketServerProtocol):
    """Echo endpoint for the Autobahn|Testsuite fuzzing client."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class EchoTesteeFactory(WebSocketServerFactory):
    protocol = EchoTesteeProtocol

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor=reactor)
