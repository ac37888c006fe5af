"""Password hashing with scrypt (memory-hard) from ``cryptography``.

Stored form: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so the cost
can be raised later without invalidating existing hashes.

Every hash and check goes through :class:`PasswordHasher`: a few at a time
on a thread pool (each scrypt at n=2^15, r=8 takes 32 MiB while it runs),
a bounded wait queue behind them, and :class:`HasherBusy` at once beyond
it, so a flood of logins cannot grow memory without bound.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections import deque
from typing import Any, Callable, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from twisted.internet.defer import Deferred, fail

LOG2_N, R, P, LENGTH = 15, 8, 1, 32
SALT_BYTES = 16

T = TypeVar("T")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = Scrypt(salt=salt, length=LENGTH, n=2 ** log2_n, r=R, p=P).derive(password.encode("utf-8"))
    return f"scrypt${log2_n}${R}${P}${_b64(salt)}${_b64(digest)}"


# Checked when a login is unknown or has no password (a token-only
# account), so such a login costs exactly the work of a real one: the same
# parameters as hash_password (no password matches it: its digest is not
# the scrypt of anything we know of, and a match is still refused).
DUMMY_HASH = f"scrypt${LOG2_N}${R}${P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(LENGTH))}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches; False for any malformed or missing hash."""
    if not stored:
        return False
    try:
        kind, log2_n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = Scrypt(salt=base64.b64decode(salt), length=len(want), n=2 ** int(log2_n), r=int(r),
                     p=int(p)).derive(password.encode("utf-8"))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


class HasherBusy(Exception):
    """Every hashing slot is taken and the wait queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many passwords are being checked right now")
        self.retry_after = retry_after


class PasswordHasher:
    """scrypt on a thread pool, at most ``concurrency`` at a time, at most
    ``queue`` waiting; beyond that :class:`HasherBusy` at once (no thread,
    no memory). ``run_in_thread(f, *args)`` returns a Deferred of
    ``f(*args)`` run off the reactor thread (``deferToThreadPool``)."""

    def __init__(self, run_in_thread: Callable[..., "Deferred[Any]"], concurrency: int, queue: int) -> None:
        self._run = run_in_thread
        self.concurrency = concurrency
        self.queue = queue
        self.running = 0
        self._waiting: deque[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def hash(self, password: str) -> "Deferred[str]":
        return self._submit(hash_password, password)

    def verify(self, password: str, stored: str | None) -> "Deferred[bool]":
        """Check ``password`` against ``stored``; without a usable hash,
        against :data:`DUMMY_HASH` (the same work) and answer False."""
        if not stored or not stored.startswith("scrypt$"):
            return self._submit(verify_password, password, DUMMY_HASH).addCallback(lambda _: False)
        return self._submit(verify_password, password, stored)

    def _submit(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        if self.running < self.concurrency:
            return self._start(f, args)
        if len(self._waiting) >= self.queue:
            return fail(HasherBusy(1))
        d: Deferred[Any] = Deferred()
        self._waiting.append((d, f, args))
        return d

    def _start(self, f: Callable[..., Any], args: tuple[Any, ...]) -> "Deferred[Any]":
        self.running += 1

        def finished(result: Any) -> Any:
            self.running -= 1
            if self._waiting:
                waiter, g, more = self._waiting.popleft()
                self._start(g, more).chainDeferred(waiter)
            return result

        return self._run(f, *args).addBoth(finished)
