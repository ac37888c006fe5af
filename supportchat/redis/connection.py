"""Redis connections on the injected reactor.

txredisapi's own helpers reach for the global reactor and convert number-like
replies (mangling ids and phone numbers). We build its protocol ourselves,
with ``convertNumbers=False`` and our reactor's ``callLater``, and keep it
connected with a ``ClientService`` (reconnect with backoff). Commands fail
fast with ``RedisUnavailable`` while disconnected, so callers can degrade.

With Sentinel (``[redis] sentinels``), every connection attempt first asks
the sentinels for the primary's address (``SENTINEL
get-master-addr-by-name``) and then checks ``ROLE`` on what it reached: only
a primary is used. After a fail-over the old primary's connections break
(killed, or closed by the sentinels when they demote it); a write answered
``READONLY`` also drops the connection, and the reconnect asks again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from supportchat.config.model import RedisConfig

log = Logger()

# A command connection owing replies that hears nothing for this long is dead.
REPLY_TIMEOUT = 5.0


class RedisUnavailable(Exception):
    """Redis cannot be reached right now."""


def is_unavailable(error: BaseException) -> bool:
    return isinstance(error, (RedisUnavailable, txredisapi.ConnectionError))


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol with a liveness deadline instead of a reply
    timeout per command: the connection is dead when it has owed replies
    for ``replyTimeout`` seconds without receiving a byte. Under load a
    healthy connection can take longer than that to answer one command (its
    replies queue behind thousands of others while the reactor catches up);
    a timer per command would then declare it dead and send the gateway
    into degraded mode for nothing. One timer per connection, not a
    callLater and a cancel per command."""

    def __init__(self, reactor: Any, replyTimeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(replyTimeout=None, **kwargs)
        self.callLater = reactor.callLater
        self._clock = reactor
        self._deadline = replyTimeout
        self._heard = 0.0
        self._watch: Any = None

    def connectionMade(self) -> Any:
        self._heard = self._clock.seconds()
        if self._deadline:
            self._watch = self._clock.callLater(self._deadline / 4, self._check)
        return super().connectionMade()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self.replyQueue.waiting:
            self._heard = self._clock.seconds()  # owed nothing until now
        return super().execute_command(*args, **kwargs)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self._heard = self._clock.seconds()
        super().dataReceived(data, unpause)

    def _check(self) -> None:
        self._watch = None
        assert self._deadline is not None
        silent = self._clock.seconds() - self._heard
        if self.replyQueue.waiting and silent >= self._deadline:
            error = f"Redis sent nothing for {silent:.1f} s while replies were due"
            while self.replyQueue.waiting:
                self.replyQueue.put(txredisapi.TimeoutError(error))
            self.transport.abortConnection()
            return
        self._watch = self._clock.callLater(self._deadline / 4, self._check)

    def connectionLost(self, why: Any) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        super().connectionLost(why)


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


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (validated by the configuration)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class NotPrimary(ConnectError):
    """What we reached is not the primary (yet): try again."""


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the primary that the sentinels name for ``master``.

    Sentinels are asked in turn (the last one that answered first); one that
    is down, slow or does not know the master is skipped."""

    def __init__(self, reactor: Any, sentinels: Sequence[str], master: str, timeout: float = 2.0) -> None:
        self._reactor = reactor
        self._sentinels = [parse_address(a) for a in sentinels]
        self._master = master
        self._timeout = timeout
        self.last_primary: tuple[str, int] | None = None

    def connect(self, protocolFactory: Any) -> "Deferred[Any]":
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> Any:
        primary = await self.primary()
        endpoint = HostnameEndpoint(self._reactor, primary[0], primary[1], timeout=self._timeout)
        return await endpoint.connect(factory)

    async def primary(self) -> tuple[str, int]:
        """The primary's address, from the first sentinel that knows it."""
        for i, (host, port) in enumerate(list(self._sentinels)):
            try:
                proto = await connectProtocol(
                    HostnameEndpoint(self._reactor, host, port, timeout=self._timeout),
                    _Protocol(self._reactor, charset="utf-8", errors="strict", replyTimeout=self._timeout,
                              convertNumbers=False),
                )
            except Exception:
                continue
            try:
                reply = await proto.execute_command("SENTINEL", "get-master-addr-by-name", self._master)
            except Exception:
                reply = None
            finally:
                proto.transport.loseConnection()
            if isinstance(reply, list) and len(reply) == 2:
                if i:  # ask this one first next time
                    self._sentinels.insert(0, self._sentinels.pop(i))
                address = (str(reply[0]), int(reply[1]))
                if address != self.last_primary:
                    log.info("Sentinel names {host}:{port} as the Redis primary ({master})",
                             host=address[0], port=address[1], master=self._master)
                self.last_primary = address
                return address
        raise ConnectError(string=f"no sentinel named a primary for {self._master!r}")


class RedisClient:
    """One reconnecting command connection (or subscriber connection)."""

    def __init__(self, reactor: Any, url: str, name: str = "redis", subscriber: bool = False,
                 on_connect: Callable[[Any], Any] | None = None, reply_timeout: float | None = REPLY_TIMEOUT,
                 on_message: Callable[[str, str], None] | None = None, sentinels: Sequence[str] = (),
                 sentinel_master: str = "mymaster") -> None:
        self._reactor = reactor
        self.url = url
        self._name = name
        self._sentinel = bool(sentinels)
        _, _, password, dbid, _ = parse_url(url)
        factory = _Factory(reactor, _Subscriber if subscriber else _Protocol, password, dbid,
                           None if subscriber else reply_timeout, on_message)
        self._protocol: Any = None
        self._on_connect = on_connect
        self.connected_once: Deferred[None] = Deferred()
        self._listeners: list[Callable[[bool], None]] = []

        self._sentinels = SentinelEndpoint(reactor, sentinels, sentinel_master) if sentinels else None
        self._address: tuple[str, int] | None = None  # the primary the current connection reached

        def prepare(proto: Any) -> Any:
            d = proto.whenConnected()
            if self._sentinel:
                d.addCallback(lambda _: proto.execute_command("ROLE"))

            def ready(role: Any) -> Any:
                if self._sentinel and not (isinstance(role, list) and role and role[0] == "master"):
                    # A replica (the sentinels' view is stale): leave it; the
                    # reconnect asks the sentinels again.
                    log.warn("Redis ({name}): the address the sentinels named is not a primary; asking again",
                             name=name)
                    reactor.callLater(0, proto.transport.loseConnection)
                    return None
                first = not self.connected_once.called
                self._protocol = proto
                self._address = self._sentinels.last_primary if self._sentinels is not None else None
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

        endpoint: IStreamClientEndpoint = self._sentinels or redis_endpoint(reactor, url)
        self.service = ClientService(
            endpoint, factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, factor=2.0, maxDelay=5.0, jitter=lambda: 0.0),
            clock=reactor, prepareConnection=prepare,
        )
        self.service.setName(name)

    @classmethod
    def from_config(cls, reactor: Any, config: RedisConfig, name: str = "redis", **kwargs: Any) -> RedisClient:
        """A client for ``[redis]``: one address, or the primary named by the sentinels."""
        return cls(reactor, config.url, name=name, sentinels=config.sentinels,
                   sentinel_master=config.sentinel_master, **kwargs)

    def recheck_primary(self) -> "Deferred[None]":
        """With Sentinel: ask the sentinels again, and leave the connection
        if they now name another primary (a fail-over that did not break
        this connection, e.g. across a network partition). Called when
        replicas stop confirming writes."""
        proto, address, sentinels = self._protocol, self._address, self._sentinels
        if proto is None or sentinels is None:
            return succeed(None)

        async def check() -> None:
            try:
                primary = await sentinels.primary()
            except Exception:
                return  # no sentinel answers: keep what we have
            if primary != address and self._protocol is proto:
                log.warn("Redis ({name}): the sentinels now name another primary; reconnecting", name=self._name)
                proto.transport.loseConnection()

        return Deferred.fromCoroutine(check())

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
            proto = self.protocol()
            d: Deferred[Any] = proto.execute_command(*args)
        except (RedisUnavailable, txredisapi.ConnectionError) as e:
            return fail(RedisUnavailable(str(e)))
        return d.addErrback(self._translate, proto)

    def eval(self, script: str, keys: list[str], args: list[Any]) -> "Deferred[Any]":
        try:
            proto = self.protocol()
            d: Deferred[Any] = proto.eval(script, keys, args)
        except (RedisUnavailable, txredisapi.ConnectionError) as e:
            return fail(RedisUnavailable(str(e)))
        return d.addErrback(self._translate, proto)

    def _translate(self, failure: Any, proto: Any) -> Any:
        if failure.check(txredisapi.ConnectionError):
            raise RedisUnavailable(str(failure.value))
        if failure.check(txredisapi.ResponseError) and "READONLY" in str(failure.value):
            # Connected to a demoted primary: drop it; the reconnect finds the new one.
            if self._protocol is proto:
                log.warn("Redis ({name}) answered READONLY: reconnecting to the primary", name=self._name)
                proto.transport.loseConnection()
            raise RedisUnavailable("Redis is a read-only replica")
        return failure
