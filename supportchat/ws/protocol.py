"""The WebSocket edge. Thin by design: decode the frame, parse it into a
typed class, hand it to the chat handler. Nothing here knows about
conversations, and the handler knows nothing of Autobahn."""

from __future__ import annotations

from types import FunctionType
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.config import ChatConfig, WebSocketConfig
from supportchat.handlers.router import FrameRouter
from supportchat.handlers.connections import ClientSession
from supportchat.metrics import Hop
from supportchat.wire.frames import FrameError, parse_frame
from supportchat.ws import quiet_debug

SUBPROTOCOL = "supportchat.v1"
log = Logger()

# The close code for a peer that does not read what it is sent (RFC 6455
# 1013 "Try Again Later"): reconnect, then sync; nothing acknowledged is lost.
SLOW_CONSUMER_CODE = 1013
SLOW_CONSUMER_REASON = "slow consumer: reconnect and sync"


def _tls_held(transport: Any) -> int:
    """Cleartext a TLS wrapper still holds: small writes it aggregates until
    the next reactor turn (up to 64,000 bytes, ``BufferingTLSTransport``)
    and writes waiting for its handshake."""
    held = 0
    attrs = getattr(transport, "__dict__", {})  # not through a wrapper's __getattr__ proxy
    pending = getattr(attrs.get("_aggregator"), "_buffer", None)
    if isinstance(pending, list):
        held += sum(len(b) for b in pending)
    waiting = attrs.get("_appSendBuffer")
    if isinstance(waiting, list):
        held += sum(len(b) for b in waiting)
    return held


def _socket_of(transport: Any) -> tuple[Any, int]:
    """The TCP transport under ``transport`` (through a TLS wrapper) and
    the cleartext the wrappers on the way still hold."""
    held = 0
    for _ in range(3):
        if transport is None:
            break
        if isinstance(transport, FileDescriptor):  # TCP (and UNIX) connections
            return transport, held
        held += _tls_held(transport)
        transport = getattr(transport, "transport", None)
    return None, held


def send_backlog(transport: Any) -> int:
    """Bytes written to ``transport`` that the kernel has not taken yet:
    Twisted's FileDescriptor buffer (``dataBuffer`` past ``offset``, plus
    what was written since its last flush), and for TLS the cleartext the
    wrapper holds (``_tls_held``). 0 for transports without a socket (tests)."""
    fd, held = _socket_of(transport)
    if fd is None:
        return held
    return held + len(fd.dataBuffer) - fd.offset + getattr(fd, "_tempDataLen", 0)


def flush_to_kernel(transport: Any) -> None:
    """Offer the buffered bytes to the kernel now, as the reactor does when
    the socket is writable: whatever remains afterwards is what the peer's
    socket would not take (the peer is not reading fast enough)."""
    layer = transport
    for _ in range(2):  # push a TLS wrapper's aggregated writes through it first
        flush = getattr(getattr(layer, "__dict__", {}).get("_aggregator"), "flush", None)
        if flush is not None:
            flush()
        layer = getattr(layer, "transport", None)
    fd, _ = _socket_of(transport)
    if fd is None or not getattr(fd, "connected", False) or getattr(fd, "disconnecting", True):
        return
    fd.doWrite()  # an error here is seen again, and handled, by the reactor's next poll


class _Timer:
    """A DelayedCall whose cancel() is safe after it fired or was cancelled
    (Autobahn cancels some timers that may already have run)."""

    __slots__ = ("_call",)

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimer:
    """Autobahn's protocol timers (handshake, ping, close) on the injected
    reactor. txaio's batched timer would reach for txaio's loop and leaves a
    bucket DelayedCall pending after every cancel."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _Timer:
        return _Timer(self._reactor.callLater(delay, fn, *args, **kwargs))


# Autobahn's opening-handshake attributes (server side), read only while the
# handshake runs (checked against autobahn/websocket/protocol.py).
HANDSHAKE_STATE = (
    "http_request_data", "http_response_data", "http_headers", "http_request_params", "http_status_line",
    "http_request_uri", "http_request_path", "http_request_host", "websocket_extensions", "websocket_protocols",
    "websocket_origin",
)


class ChatServerProtocol(WebSocketServerProtocol):
    """One chat connection: bytes in, typed frames out; frames out, bytes in."""

    factory: "ChatServerFactory"
    principal: Principal | None = None
    session: ClientSession | None = None
    # The outgoing bound: armed while bytes stay queued for the peer.
    _send_timer: IDelayedCall | None = None
    _drained_since_armed = False
    slow_consumer = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.live.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # Autobahn leaves the close-handshake timer running when the
            # connection was failed (e.g. 1007); it has nothing left to do.
            if self.closeHandshakeTimeoutCall is not None:
                self.closeHandshakeTimeoutCall.cancel()
                self.closeHandshakeTimeoutCall = None
            self._disarm_send_timer()
            self.factory.live.discard(self)
            waiters, self.factory.lost_waiters[self] = self.factory.lost_waiters.get(self, []), []
            self.factory.lost_waiters.pop(self, None)
            for d in waiters:
                d.callback(None)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        if SUBPROTOCOL in request.protocols:
            return SUBPROTOCOL
        return None

    def onOpen(self) -> None:
        self._forget_handshake()
        if self.principal is None:  # not built through the guard: refuse
            self.close(1008, "unauthorized")
            return
        self.session = ClientSession(self.principal, self)
        self.factory.background.run("open_session", self.factory.handler.on_open, self.session)
        if self.principal.profile is not None and self.factory.on_profile is not None:
            # The token's profile claim: stored in the background, never delaying hello.
            self.factory.background.run("profile_claim", self.factory.on_profile, self.principal)

    def _forget_handshake(self) -> None:
        """Drop what Autobahn keeps of the opening handshake (raw request and
        response, parsed headers and query, offers) for the connection's
        life: nothing reads it after the handshake, and across thousands of
        idle connections it is a large share of their memory."""
        for name in HANDSHAKE_STATE:
            if name in self.__dict__:
                setattr(self, name, None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        if isBinary:
            self.factory.handler.on_bad_frame(
                session, FrameError("bad_request", "binary frames are not supported; send JSON text")
            )
            return
        hop = self.factory.parse_hop
        started = hop.now() if hop is not None else 0.0
        try:
            # One strict decode of the whole message instead of Autobahn's
            # per-frame incremental validator (utf8validateIncoming is off,
            # ws/options.py): invalid UTF-8 still fails the connection, 1007.
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._invalid_payload("invalid UTF-8 in a text message")
            return
        try:
            frame = parse_frame(text, self.factory.max_body_chars, self.factory.sync_limit_max)
        except FrameError as e:
            if hop is not None:
                hop.since(started)
            self.factory.handler.on_bad_frame(session, e)
            return
        if hop is not None:
            hop.since(started)
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
        if self.state != self.STATE_OPEN:
            # Closing or closed (the handler learns it at onClose): the frame
            # would be lost anyway; the client catches up with sync.
            return
        queued = self.backlog()
        if queued > self.factory.send_buffer_limit:
            # Bytes written during this reactor turn may not have been
            # offered to the kernel yet: offer them now, then judge.
            flush_to_kernel(self.transport)
            queued = self.backlog()
            if queued > self.factory.send_buffer_limit:
                # The peer's socket is full and more than the limit waits
                # here: it is not reading. Drop this frame and close it (it
                # resumes with sync after reconnecting); its buffer stops
                # growing here.
                self._close_slow_consumer("buffer", queued)
                return
        if queued == 0:
            self._drained_since_armed = True
        elif self._send_timer is None:
            self._arm_send_timer()
        data = payload.encode("utf-8")
        self.sendMessage(data, isBinary=False, doNotCompress=len(data) < self.factory.deflate_threshold)

    # -- the outgoing bound --------------------------------------------
    def backlog(self) -> int:
        """Bytes queued for this peer in this process: ``send_backlog`` of
        the transport plus Autobahn's own send queue (chopped writes only)."""
        queued = send_backlog(self.transport)
        if self.send_queue:
            queued += sum(len(item[0]) for item in self.send_queue)
        return queued

    def _arm_send_timer(self) -> None:
        self._drained_since_armed = False
        self._send_timer = self.factory._clock.callLater(self.factory.send_timeout, self._send_timer_fired)

    def _disarm_send_timer(self) -> None:
        if self._send_timer is not None and self._send_timer.active():
            self._send_timer.cancel()
        self._send_timer = None

    def _send_timer_fired(self) -> None:
        """``send_timeout`` after bytes were found waiting for the peer:
        close it unless its queue was seen empty meanwhile (checked at every
        frame sent to it, and now after offering the bytes to the kernel)."""
        self._send_timer = None
        if self.state != self.STATE_OPEN:
            return
        flush_to_kernel(self.transport)
        queued = self.backlog()
        if queued == 0:
            return
        if self._drained_since_armed:
            self._arm_send_timer()
            return
        self._close_slow_consumer("timeout", queued)

    def _close_slow_consumer(self, why: str, queued: int) -> None:
        """Close with 1013; the close frame waits behind what the peer has
        not read, so Autobahn's close-handshake timeout
        (``close_handshake_timeout``) aborts the TCP connection."""
        if self.slow_consumer:
            return
        self.slow_consumer = True
        self._disarm_send_timer()
        self.factory.slow_consumer_closed(why)
        log.info("closing a slow consumer ({why}): {queued} bytes queued for {peer}", why=why, queued=queued,
                 peer=self.peer)
        self.close(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)

    def close(self, code: int, reason: str) -> None:
        # sendClose() only takes 1000 and 3000-4999; protocol codes such as
        # 1001 (going away), 1008 (policy) and 1011 go through the frame call.
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)


class ChatServerFactory(WebSocketServerFactory):
    """Builds chat protocols; the HTTP guard hands over the authenticated
    principal just before the protocol is built."""

    protocol = ChatServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        handler: FrameRouter,
        background: BackgroundTasks,
        ws_config: WebSocketConfig,
        chat_config: ChatConfig,
    ) -> None:
        super().__init__(reactor=reactor)
        quiet_debug.install()  # Autobahn's debug arguments: formatted only if logged
        self._batched_timer = ReactorTimer(reactor)
        self.handler = handler
        self.background = background
        self.max_body_chars = ws_config.max_body_chars
        self.sync_limit_max = chat_config.sync_limit_max
        self.deflate_threshold = ws_config.deflate_threshold if ws_config.deflate else 1 << 62
        self.send_buffer_limit = ws_config.send_buffer_limit
        self.send_timeout = ws_config.send_timeout
        self.on_slow_consumer: Callable[[str], Any] | None = None
        self.pending_principal: Principal | None = None
        self.on_profile: Callable[[Principal], Any] | None = None
        # Times frame text -> typed frame (``frame_parse_seconds``) when set.
        self.parse_hop: Hop | None = None
        self._clock = reactor
        self.live: set[ChatServerProtocol] = set()
        self.lost_waiters: dict[ChatServerProtocol, list[Deferred[None]]] = {}
        self._bind_options()

    def slow_consumer_closed(self, why: str) -> None:
        """A connection was closed for not reading (``buffer`` or ``timeout``)."""
        if self.on_slow_consumer is not None:
            self.on_slow_consumer(why)

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._bind_options()

    def _bind_options(self) -> None:
        """Give this factory a protocol class that carries its options as
        class attributes. Autobahn copies every option it does not find on
        the protocol into each connection's ``__dict__`` (some forty of
        them); found on the class, they are shared: about 1.7 KB less for
        every connection, idle or not."""
        options = {}
        for name in ChatServerProtocol.CONFIG_ATTRS:
            if hasattr(self, name):
                value = getattr(self, name)
                # A plain function (the deflate accept) must not become a method.
                options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
        self.protocol = type("ChatServerProtocolWithOptions", (ChatServerProtocol,), options)  # type: ignore[assignment]

    def close_all(self, code: int, reason: str, timeout: float) -> "Deferred[None]":
        """Close every connection with ``code`` and wait for them to go;
        after ``timeout`` seconds, abort the ones still open."""
        waits = []
        for proto in list(self.live):
            d: Deferred[None] = Deferred()
            self.lost_waiters.setdefault(proto, []).append(d)
            waits.append(d)
            if proto.state == proto.STATE_OPEN:
                proto.close(code, reason)
            elif proto.state != proto.STATE_CLOSING:
                proto.dropConnection(abort=True)
        everything = DeferredList(waits)

        def abort() -> None:
            for proto in list(self.live):
                proto.dropConnection(abort=True)

        timer = self._clock.callLater(timeout, abort)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return everything.addCallback(done)

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
        self._batched_timer = ReactorTimer(reactor)
