"""The SMTP seam: :class:`EmailSender` sends one composed message.
:class:`SmtpEmailSender` is Twisted's ESMTP client on the injected reactor
(STARTTLS and AUTH as configured); :class:`MemoryEmailSender` is its
in-memory twin for tests. Neither logs a password or a message body."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTCP
from twisted.python.failure import Failure

STARTTLS_MODES = ("off", "opportunistic", "required")


class EmailError(Exception):
    """Sending failed (connection refused, timeout, rejected); the message
    stays in the outbox and is retried."""


class EmailSender(Protocol):
    def send(self, from_addr: str, to_addr: str, message: bytes) -> "Deferred[None]":
        """Fires when the server accepted the message; fails with
        :class:`EmailError` otherwise."""


@dataclass
class MemoryEmailSender:
    """Keeps what was sent; ``fail_with`` makes every send fail (an SMTP
    server that is down)."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    fail_with: str | None = None

    def send(self, from_addr: str, to_addr: str, message: bytes) -> "Deferred[None]":
        if self.fail_with is not None:
            return fail(EmailError(self.fail_with))
        self.sent.append((from_addr, to_addr, message))
        return succeed(None)


class SmtpEmailSender:
    """One connection per message through ``ESMTPSenderFactory``."""

    def __init__(self, reactor: IReactorTCP, host: str, port: int, *, username: str = "", password: str = "",
                 starttls: str = "opportunistic", timeout: float = 30.0, context_factory: Any = None) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self._context_factory = context_factory

    def __repr__(self) -> str:  # never the password
        return f"SmtpEmailSender({self._host}:{self._port}, starttls={self._starttls})"

    def send(self, from_addr: str, to_addr: str, message: bytes) -> "Deferred[None]":
        from twisted.internet import ssl
        from twisted.mail.smtp import ESMTPSenderFactory

        done: Deferred[Any] = Deferred()
        closed: Deferred[None] = Deferred()
        context = None
        if self._starttls != "off":
            context = self._context_factory or ssl.optionsForClientTLS(self._host)

        class Factory(ESMTPSenderFactory):
            """Also tells when the connection is gone, so a send ends with it."""

            noisy = False

            def clientConnectionFailed(self, connector: Any, err: Failure) -> None:
                super().clientConnectionFailed(connector, err)
                if not closed.called:
                    closed.callback(None)

            def clientConnectionLost(self, connector: Any, err: Failure) -> None:
                super().clientConnectionLost(connector, err)
                if not closed.called:
                    closed.callback(None)

        factory = Factory(
            self._username.encode() if self._username else None,
            self._password.encode() if self._username else None,
            from_addr, to_addr, BytesIO(message), done,
            retries=0, timeout=int(self._timeout) or None,
            contextFactory=context,
            requireAuthentication=bool(self._username),
            requireTransportSecurity=self._starttls == "required",
            hostname=None if self._starttls == "off" else self._host,
        )
        self._reactor.connectTCP(self._host, self._port, factory, timeout=self._timeout)

        def failed(reason: Failure) -> None:
            # Only the exception's class and short text: never credentials.
            raise EmailError(f"{type(reason.value).__name__}: {str(reason.value)[:150]}")

        def after_close(result: Any) -> "Deferred[Any]":
            return closed.addCallback(lambda _: result)

        return done.addBoth(after_close).addCallbacks(lambda _: None, failed)
