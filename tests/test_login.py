"""POST /api/v1/login hardened (issue 12, finding 7): throttling per login
and per client address with exponential backoff on the injected clock,
the same scrypt work for unknown logins as for real ones, and scrypt
through a bounded queue so a flood of logins answers 503 at once instead
of growing memory."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from supportchat.auth import TokenIssuer, TokenVerifier
from supportchat.config.model import AuthConfig, WorkflowConfig
from supportchat.http.authn import Authenticator
from supportchat.http.workflow_api import LoginApi, LoginThrottle
from supportchat.ratelimit import FailureBackoff
from supportchat.workflow import passwords
from supportchat.workflow.memory import MemoryWorkflowStore
from supportchat.workflow.models import Agent
from supportchat.workflow.passwords import LOG2_N, P, R, PasswordHasher, hash_password
from tests.support import Api, start_server, token

SECRET = "s" * 48
PASSWORD = "correct horse battery"
# A cheap hash for the throttling tests (the parameters are stored with it).
CHEAP = hash_password(PASSWORD, log2_n=4)


def inline(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """Run "in the thread pool" at once (the tests' reactor has none)."""
    return succeed(f(*args))


class LoginHarness:
    def __init__(self, clock: Clock, hasher: PasswordHasher, config: AuthConfig | None = None) -> None:
        self.clock = clock
        self.store = MemoryWorkflowStore()
        auth = config or AuthConfig()
        verifier = TokenVerifier(auth, SECRET)
        self.throttle = LoginThrottle(clock, auth)
        self.api = LoginApi(clock, Authenticator(verifier, self.store), self.store, TokenIssuer(auth, SECRET),
                            WorkflowConfig(), hasher, self.throttle)

    def add(self, login: str, password_hash: str | None = CHEAP, disabled: bool = False) -> None:
        self.store.agents[login] = Agent(login, login, login.title(), "agent", password_hash=password_hash,
                                         disabled=disabled)

    def post(self, login: str, password: str, address: str = "10.0.0.1") -> DummyRequest:
        request = DummyRequest([])
        request.client = IPv4Address("TCP", address, 40000)
        request.method = b"POST"
        request.content = BytesIO(json.dumps({"login": login, "password": password}).encode())
        self.api.render(request)
        return request


def answer(request: DummyRequest) -> tuple[int | None, Any]:
    assert request.finished, "no answer yet"
    return request.responseCode, json.loads(b"".join(request.written))


def retry_after(request: DummyRequest) -> list[bytes] | None:
    return request.responseHeaders.getRawHeaders(b"retry-after")


class ThrottleTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.h = LoginHarness(self.clock, PasswordHasher(inline, 2, 4))
        self.h.add("ann")

    def test_backoff_per_login_doubles_and_resets_on_success(self) -> None:
        """Five failures are free; then each failure blocks the login for 1,
        2, 4... seconds: attempts meanwhile get 429 JSON with Retry-After
        (without checking the password); once the wait is over, the right
        password works and resets the count."""
        for _ in range(6):
            self.assertEqual(answer(self.h.post("ann", "wrong"))[0], 401)
        blocked = self.h.post("ann", PASSWORD)
        code, body = answer(blocked)
        self.assertEqual((code, body["error"]["code"], retry_after(blocked)), (429, "rate_limited", [b"1"]))
        self.clock.advance(1)
        self.assertEqual(answer(self.h.post("ann", "wrong"))[0], 401)
        self.assertEqual(retry_after(self.h.post("ann", "wrong")), [b"2"])
        self.clock.advance(1.5)
        self.assertEqual(retry_after(self.h.post("ann", PASSWORD)), [b"1"])  # rounded up
        self.clock.advance(0.5)
        self.assertEqual(answer(self.h.post("ann", PASSWORD))[0], 200)
        for _ in range(5):
            self.assertEqual(answer(self.h.post("ann", "wrong"))[0], 401)  # free again

    def test_unknown_logins_are_throttled_the_same(self) -> None:
        """A login that does not exist answers exactly like one that does
        (401, then 429 with the same Retry-After): the throttle tells
        nobody which logins exist. Case does not dodge it."""
        codes = {}
        for login in ("ann", "nobody"):
            codes[login] = [answer(self.h.post(login if i % 2 else login.upper(), "wrong"))[0] for i in range(6)]
            blocked = self.h.post(login, "wrong")
            codes[login].append(answer(blocked)[0])
            codes[login].append(retry_after(blocked))
        self.assertEqual(codes["ann"], [401] * 6 + [429, [b"1"]])
        self.assertEqual(codes["nobody"], codes["ann"])

    def test_backoff_per_address(self) -> None:
        """Twenty failures from one address (any logins) are free; the next
        blocks that address for every login, even the right password of
        another account, while other addresses are served."""
        for i in range(21):
            self.assertEqual(answer(self.h.post(f"guess{i}", "wrong", "10.0.0.9"))[0], 401)
        code, _ = answer(self.h.post("ann", PASSWORD, "10.0.0.9"))
        self.assertEqual(code, 429)
        self.assertEqual(answer(self.h.post("ann", PASSWORD, "10.0.0.2"))[0], 200)
        self.clock.advance(1)
        self.assertEqual(answer(self.h.post("ann", PASSWORD, "10.0.0.9"))[0], 200)

    def test_backoff_is_capped_and_forgotten(self) -> None:
        """The wait never exceeds login_backoff_max; a login that has not
        failed for login_forget_after seconds starts from zero; the
        remembered keys stay bounded."""
        backoff = FailureBackoff(self.clock, free=0, initial=1.0, maximum=300.0, forget_after=3600.0, max_keys=3)
        for _ in range(40):
            backoff.failed("k")
        self.assertEqual(backoff.retry_after("k"), 300.0)
        self.clock.advance(3600)
        self.assertEqual(backoff.retry_after("k"), 0.0)
        backoff.failed("k")
        self.assertEqual(backoff.retry_after("k"), 1.0)
        for key in ("a", "b", "c", "d"):
            backoff.failed(key)
        self.assertEqual(len(backoff), 3)


class EqualWorkTests(unittest.SynchronousTestCase):
    def test_unknown_logins_cost_the_same_scrypt(self) -> None:
        """An existing login (right or wrong password), an unknown one, a
        token-only account (no password) and a disabled one each run scrypt
        exactly once with the same parameters as hash_password: the answer
        time does not tell which logins exist."""
        runs: list[tuple[int, int, int, int]] = []
        real = passwords.Scrypt

        def recording(salt: bytes, length: int, n: int, r: int, p: int) -> Any:
            runs.append((n, r, p, length))
            return real(salt=salt, length=length, n=n, r=r, p=p)

        h = LoginHarness(Clock(), PasswordHasher(inline, 2, 4))
        h.add("ann", hash_password(PASSWORD))
        h.add("tok", None)
        h.add("off", hash_password(PASSWORD), disabled=True)
        self.patch(passwords, "Scrypt", recording)
        expected = [("ann", "wrong", 401), ("ann", PASSWORD, 200), ("nobody", "wrong", 401),
                    ("tok", "wrong", 401), ("off", PASSWORD, 401)]
        for login, password, code in expected:
            del runs[:]
            self.assertEqual(answer(h.post(login, password))[0], code, login)
            self.assertEqual(runs, [(2 ** LOG2_N, R, P, 32)], login)


class BoundedQueueTests(unittest.SynchronousTestCase):
    def test_a_flood_of_logins_is_bounded(self) -> None:
        """Forty concurrent logins with two hashing slots and a queue of
        three: two scrypt runs start, three wait, the other thirty-five get
        503 JSON with Retry-After at once (no thread, no memory); as slots
        free up the queued ones run, never more than two at a time, and all
        five are answered."""
        pending: list[Deferred[Any]] = []
        peak = [0]
        hasher = PasswordHasher(lambda f, *a: self.start(pending, hasher, peak), 2, 3)
        h = LoginHarness(Clock(), hasher, AuthConfig(login_free_failures=100, login_free_failures_per_address=100))
        h.add("ann")
        requests = [h.post("ann" if i % 2 else f"u{i}", "wrong", f"10.1.0.{i}") for i in range(40)]
        self.assertEqual((len(pending), hasher.running, hasher.waiting), (2, 2, 3))
        busy = [r for r in requests if r.finished]
        self.assertEqual(len(busy), 35)
        for r in busy:
            code, body = answer(r)
            self.assertEqual((code, body["error"]["code"], retry_after(r)), (503, "unavailable", [b"1"]))
        fired = 0
        while fired < len(pending):
            pending[fired].callback(False)
            fired += 1
        self.assertEqual((fired, peak[0], hasher.running, hasher.waiting), (5, 2, 0, 0))
        self.assertEqual(sorted(answer(r)[0] for r in requests if r not in busy), [401] * 5)

    def start(self, pending: list["Deferred[Any]"], hasher: PasswordHasher, peak: list[int]) -> "Deferred[Any]":
        peak[0] = max(peak[0], hasher.running)
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d


class LoginOverHttpTests(unittest.TestCase):
    """The same through a whole server (routes, Site, thread pool)."""

    timeout = 60

    @inlineCallbacks
    def test_repeated_failures_get_429_with_retry_after(self) -> Any:
        """Wrong passwords for one account: the first six answer 401, the
        seventh 429 JSON with Retry-After (before: forty in a row were all
        401)."""
        server = yield start_server(self)
        api = Api(server.port)

        def call(path: str, body: Any, bearer: str | None = None) -> Any:
            return api.exchange("POST", path, bearer, body)

        r, body = yield call("/agents", {"login": "ann", "password": PASSWORD}, token("boss", "admin"))
        self.assertEqual(r.code, 201, body)
        codes = []
        for _ in range(7):
            r, body = yield call("/login", {"login": "ann", "password": "wrong password"})
            codes.append(r.code)
        self.assertEqual(codes, [401] * 6 + [429])
        self.assertEqual((body["error"]["code"], r.headers.getRawHeaders(b"retry-after")), ("rate_limited", [b"1"]))
