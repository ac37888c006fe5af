"""The outgoing HTTP of webhooks behind one small seam.

``WebhookClient.post(url, headers, body)`` fires with a :class:`Response`
(status, a short excerpt of the body, seconds taken) or fails with
:class:`TargetRefused` (the SSRF guard: nothing was sent),
:class:`DeliveryError` (connection refused or reset, timeout, TLS).
``MemoryWebhookClient`` is the twin; ``TreqWebhookClient`` the real one,
on treq with the reactor passed in. Both pass ``WebhookClientContract``
(tests/test_webhooks.py).

The guard: the host is resolved by the client itself, every address is
checked, and the connection goes to the checked address (so a DNS answer
that changes between check and connect cannot redirect it). Addresses
that are not globally routable (loopback, private, link-local with the
cloud metadata address, CGNAT, multicast, reserved, unspecified) are
refused unless a network of ``[webhooks] allowed_private_networks`` holds
them. https certificates and host names are verified (service-identity).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

EXCERPT_BYTES = 512

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DeliveryError(Exception):
    """The request failed without an HTTP answer."""


class TargetRefused(DeliveryError):
    """The SSRF guard refused the target; no request was made."""


@dataclass(frozen=True)
class Response:
    status: int
    excerpt: str
    seconds: float


class WebhookClient(Protocol):
    def post(self, url: str, headers: dict[str, str], body: bytes) -> "Deferred[Response]": ...


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def address_allowed(address: str, allowed: Sequence[Network]) -> bool:
    """Is a connection to ``address`` allowed: globally routable, or inside
    one of ``allowed``."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return True
    return ip.is_global and not ip.is_multicast


def literal_refused(url: str, allowed: Sequence[Network]) -> bool:
    """A URL whose host is an IP literal the guard would refuse (checked at
    registration; names are checked when delivering)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in ("localhost", "localhost.localdomain") and not allowed
    return not address_allowed(host, allowed)


def excerpt(data: bytes) -> str:
    return data[:EXCERPT_BYTES].decode("utf-8", "replace")


@dataclass
class SentRequest:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class MemoryWebhookClient:
    """The twin: records each request and answers with ``answer(request)``
    (a Response, or an exception to fail with). Hosts map to addresses
    through ``hosts`` and go through the same guard."""

    answer: Callable[[SentRequest], Response | Exception] = lambda _: Response(200, "", 0.0)
    allowed: list[Network] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)
    sent: list[SentRequest] = field(default_factory=list)

    def post(self, url: str, headers: dict[str, str], body: bytes) -> "Deferred[Response]":
        host = urlsplit(url).hostname or ""
        address = self.hosts.get(host, host)
        try:
            ok = address_allowed(address, self.allowed)
        except ValueError:
            return fail(DeliveryError(f"cannot resolve {host}"))
        if not ok:
            return fail(TargetRefused(f"{host} resolves to a refused address"))
        request = SentRequest(url, dict(headers), body)
        self.sent.append(request)
        result = self.answer(request)
        if isinstance(result, Exception):
            return fail(result)
        return succeed(result)


class _Collector:
    """Keeps the first EXCERPT_BYTES of a body, drops the rest."""

    def __init__(self) -> None:
        self.data = b""

    def __call__(self, chunk: bytes) -> None:
        if len(self.data) < EXCERPT_BYTES:
            self.data += chunk[:EXCERPT_BYTES - len(self.data)]


class TreqWebhookClient:
    """treq on an ``Agent`` whose endpoints resolve, check and connect to
    the checked address (``_GuardedEndpoints``); non-persistent
    connections; ``timeout`` bounds connecting and the whole answer."""

    def __init__(self, reactor: Any, allowed: Sequence[Network], timeout: float,
                 resolve: Callable[[str, int], "Deferred[list[str]]"] | None = None, trust_root: Any = None) -> None:
        """``trust_root`` (an ``IOpenSSLTrustRoot``; tests) replaces the
        platform's certificate authorities; host names are verified either way."""
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self._reactor = reactor
        self._timeout = timeout
        endpoints = _GuardedEndpoints(reactor, list(allowed), timeout, resolve or _resolver(reactor), trust_root)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=HTTPConnectionPool(reactor, persistent=False))
        self._http = HTTPClient(agent)

    def post(self, url: str, headers: dict[str, str], body: bytes) -> "Deferred[Response]":
        return Deferred.fromCoroutine(self._post(url, headers, body))

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        import treq
        from twisted.web.http_headers import Headers

        started = self._reactor.seconds()
        try:
            response = await self._http.post(url, data=body, headers=Headers({k: [v] for k, v in headers.items()}),
                                             timeout=self._timeout, allow_redirects=False)
            collector = _Collector()
            await treq.collect(response, collector)
        except TargetRefused:
            raise
        except Exception as e:  # connection, TLS, timeout (CancelledError) alike
            raise DeliveryError(_describe(e)) from None
        return Response(response.code, excerpt(collector.data), self._reactor.seconds() - started)


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value if isinstance(reasons[0], Failure) else reasons[0]
        if isinstance(inner, TargetRefused):
            raise inner
        return f"{type(inner).__name__}: {inner}"[:200]
    return f"{type(e).__name__}: {e}"[:200]


def _resolver(reactor: Any) -> Callable[[str, int], "Deferred[list[str]]"]:
    from twisted.internet.threads import deferToThreadPool

    def resolve(host: str, port: int) -> "Deferred[list[str]]":
        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return [str(info[4][0]) for info in infos]

        d: Deferred[list[str]] = deferToThreadPool(reactor, reactor.getThreadPool(), lookup)
        return d

    return resolve


class _GuardedEndpoints:
    """``IAgentEndpointFactory``: resolve, refuse when any address is not
    allowed, connect to the first checked address (TLS for https, verified
    against the host name)."""

    def __init__(self, reactor: Any, allowed: list[Network], timeout: float,
                 resolve: Callable[[str, int], "Deferred[list[str]]"], trust_root: Any = None) -> None:
        self._reactor = reactor
        self._allowed = allowed
        self._timeout = timeout
        self._resolve = resolve
        self._trust_root = trust_root

    def endpointForURI(self, uri: Any) -> Any:
        return _GuardedEndpoint(self, uri.scheme.decode("ascii"), uri.host.decode("idna"), uri.port)


class _GuardedEndpoint:
    def __init__(self, factory: _GuardedEndpoints, scheme: str, host: str, port: int) -> None:
        self._f = factory
        self._scheme = scheme
        self._host = host
        self._port = port

    def connect(self, protocol_factory: Any) -> "Deferred[Any]":
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
        from twisted.web.client import BrowserLikePolicyForHTTPS

        f = self._f
        host = self._host.strip("[]")
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = await f._resolve(host, self._port)
            except Exception as e:
                raise DeliveryError(f"cannot resolve {host}: {e}") from None
        if not addresses:
            raise DeliveryError(f"cannot resolve {host}")
        if not all(address_allowed(a, f._allowed) for a in addresses):
            raise TargetRefused(f"{host} resolves to a refused address")
        address = addresses[0]
        endpoint: Any
        if ":" in address:
            endpoint = TCP6ClientEndpoint(f._reactor, address, self._port, timeout=f._timeout)
        else:
            endpoint = TCP4ClientEndpoint(f._reactor, address, self._port, timeout=f._timeout)
        if self._scheme == "https":
            if f._trust_root is not None:
                from twisted.internet.ssl import optionsForClientTLS

                creator = optionsForClientTLS(self._host, trustRoot=f._trust_root)
            else:
                creator = BrowserLikePolicyForHTTPS().creatorForNetloc(self._host.encode("idna"), self._port)
            endpoint = wrapClientTLS(creator, endpoint)
        protocol = await endpoint.connect(protocol_factory)
        peer = protocol.transport.getPeer()
        if not address_allowed(str(getattr(peer, "host", "")), f._allowed):
            protocol.transport.abortConnection()
            raise TargetRefused(f"{host}: connected to a refused address")
        return protocol
