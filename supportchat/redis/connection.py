"""Redis connections on the injected reactor.

txredisapi's own helpers reach for the global reactor and convert number-like
replies (mangling ids and phone numbers). We build its protocol ourselves,
with ``convertNumbers=False`` and our reactor's ``callLater``, and keep it
connected with a ``ClientService`` (reconnect with backoff). Commands fail
fast with ``RedisUnavailable`` while disconnected, so callers can degrade.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

log = Logger()

REPLY_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """Redis cannot be reached right now."""


def is_unavailable(error: BaseException) -> bool:
    return isinstance(error, (RedisUnavailable, txredisapi.ConnectionError))


class _Protocol(txredisapi.RedisProtocol):
    def __init__(self, reactor: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.callLater = reactor.callLater


class _Subscriber(txredisapi.SubscriberProtocol):
    def __init__(self, reactor: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.callLater = reactor.callLater

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        # Through the factory: ClientService hands prepareConnection a proxy,
        # so attributes set on "the protocol" there never reach this object.
        self.factory.on_message(channel, message)


class _Factory(protocol.Factory):
    """Builds txredisapi protocols; holds what their connectionMade expects."""

    isLazy = True

    def __init__(self, reactor: Any, cls: type, password: str | None, dbid: int | None, timeout: float | None,
                 on_message: Callable[[str, str], None] | None = None) -> None:
        self.on_message = on_message or (lambda channel, message: None)
        self._reactor = reactor
        self._cls = cls
        self._password = password
        self._dbid = dbid
        self._timeout = timeout

    def buildProtocol(self, addr: Any) -> Any:
        p = self._cls(
            self._reactor, charset="utf-8", errors="strict", replyTimeout=self._timeout,
            password=self._password, dbid=self._dbid, convertNumbers=False,
        )
        p.factory = self
        return p

    def stopTrying(self) -> None:
        """Called by txredisapi on AUTH failure; ClientService keeps retrying."""

    def connectionError(self, message: str) -> None:
        log.error("Redis: {message}", message=message)


def parse_url(url: str) -> tuple[str, int, str | None, int | None, bool]:
    parts = urlsplit(url)
    dbid = int(parts.path.strip("/")) if parts.path.strip("/") else None
    return parts.hostname or "127.0.0.1", parts.port or 6379, parts.password, dbid, parts.scheme == "rediss"


def redis_endpoint(reactor: Any, url: str) -> IStreamClientEndpoint:
    host, port, _, _, tls = parse_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=5)
    if tls:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


class RedisClient:
    """One reconnecting command connection (or subscriber connection)."""

    def __init__(self, reactor: Any, url: str, name: str = "redis", subscriber: bool = False,
                 on_connect: Callable[[Any], Any] | None = None, reply_timeout: float | None = REPLY_TIMEOUT,
                 on_message: Callable[[str, str], None] | None = None) -> None:
        self._reactor = reactor
        self.url = url
        _, _, password, dbid, _ = parse_url(url)
        factory = _Factory(reactor, _Subscriber if subscriber else _Protocol, password, dbid,
                           None if subscriber else reply_timeout, on_message)
        self._protocol: Any = None
        self._on_connect = on_connect
        self.connected_once: Deferred[None] = Deferred()
        self._listeners: list[Callable[[bool], None]] = []

        def prepare(proto: Any) -> Any:
            d = proto.whenConnected()

            def ready(_: Any) -> Any:
                first = not self.connected_once.called
                self._protocol = proto
                proto.whenDisconnected().addCallback(self._lost, proto)
                self._changed(True)
                if first:
                    self.connected_once.callback(None)
                d: Deferred[Any] = maybeDeferred(self._on_connect, proto) if self._on_connect else succeed(None)

                def announce(result: Any) -> Any:
                    # After on_connect (e.g. SUBSCRIBE): ready in every sense.
                    log.info("Connected to Redis ({name})", name=name)
                    return result

                if first:
                    d.addCallback(announce)
                return d

            return d.addCallback(ready)

        self.service = ClientService(
            redis_endpoint(reactor, url), factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, factor=2.0, maxDelay=5.0, jitter=lambda: 0.0),
            clock=reactor, prepareConnection=prepare,
        )
        self.service.setName(name)

    def _lost(self, _: Any, proto: Any) -> None:
        if self._protocol is proto:
            self._protocol = None
            self._changed(False)

    def _changed(self, up: bool) -> None:
        for listener in list(self._listeners):
            listener(up)

    def on_state(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def protocol(self) -> Any:
        if self._protocol is None:
            raise RedisUnavailable("not connected to Redis")
        return self._protocol

    def execute(self, *args: Any) -> "Deferred[Any]":
        try:
            d: Deferred[Any] = self.protocol().execute_command(*args)
        except (RedisUnavailable, txredisapi.ConnectionError) as e:
            return fail(RedisUnavailable(str(e)))
        return d.addErrback(_translate)

    def eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        try:
            d: Deferred[Any] = self.protocol().eval(script, keys, args)
        except (RedisUnavailable, txredisapi.ConnectionError) as e:
            return fail(RedisUnavailable(str(e)))
        return d.addErrback(_translate)


def _translate(failure: Any) -> Any:
    if failure.check(txredisapi.ConnectionError):
        raise RedisUnavailable(str(failure.value))
    return failure
