"""Private Redis servers for tests: never the shared one on 6379.

``PrivateRedis`` runs ``redis-server`` on a free port in a temp directory;
tests that stop, kill or restart Redis use their own instance. ``shared()``
is one instance per test run for tests that only need a clean database.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from tests.support import free_port

REDIS_SERVER = shutil.which("redis-server")
# trial's class-level ``skip`` for tests that start their own Redis processes.
REDIS_SKIP = None if REDIS_SERVER else "redis-server is not installed"


class PrivateRedis:
    def __init__(self, appendonly: bool = False, extra_args: list[str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="supportchat-redis-")
        self.port = free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until it says it accepts connections."""
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--daemonize", "no", "--loglevel", "notice", *self.extra_args,
        ]
        self._spawn(args)

    def _spawn(self, args: list[str], marker: bytes = b"Ready to accept connections") -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = b""
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while marker not in out:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start:\n" + out.decode(errors="replace"))
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                out += chunk
        # Keep draining its output so it never blocks on a full pipe.
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True, text=True
        ).stdout.strip()


class PrivateSentinel(PrivateRedis):
    """``redis-server --sentinel`` on a free port, monitoring ``master``
    with short fail-over times (tests only)."""

    def __init__(self, master: str, primary_port: int, quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 20000) -> None:
        super().__init__()
        self.master = master
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n"
                f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {master} 2\n"
            )

    def start(self) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self._spawn([REDIS_SERVER, self.conf, "--sentinel", "--daemonize", "no", "--loglevel", "notice"],
                    marker=b"+monitor master")

    def primary_port(self) -> int | None:
        """The primary's port as this sentinel sees it (None if it cannot tell)."""
        try:
            reply = self.cli("SENTINEL", "get-master-addr-by-name", self.master).split("\n")
        except subprocess.CalledProcessError:
            return None
        return int(reply[1]) if len(reply) == 2 and reply[1].isdigit() else None

    def _instances(self, what: str) -> list[dict[str, str]]:
        lines = self.cli("SENTINEL", what, self.master).split("\n")
        out: list[dict[str, str]] = []
        for key, value in zip(lines[0::2], lines[1::2]):
            if key == "name":
                out.append({})
            if out:
                out[-1][key] = value
        return out

    def knows(self, replicas: int, sentinels: int) -> bool:
        """Has it discovered that many healthy replicas and other sentinels?"""
        try:
            seen = self._instances("replicas")
            others = self._instances("sentinels")
        except subprocess.CalledProcessError:
            return False
        healthy = [r for r in seen if r.get("flags") == "slave" and r.get("master-link-status") == "ok"]
        return len(healthy) >= replicas and len(others) >= sentinels


_shared: PrivateRedis | None = None


def shared() -> PrivateRedis:
    """One private Redis for this test run (flush it in setUp)."""
    global _shared
    if _shared is None:
        _shared = PrivateRedis()
        _shared.start()
        atexit.register(_shared.cleanup)
    return _shared


@defer.inlineCallbacks
def connected_client(testcase: Any, url: str) -> Any:
    """A started RedisClient on the trial reactor, stopped at cleanup."""
    from twisted.internet import reactor

    from supportchat.redis.connection import RedisClient

    client = RedisClient(reactor, url)
    client.service.startService()
    testcase.addCleanup(client.service.stopService)
    yield client.service.whenConnected()
    # Leave ClientService's state machine before the test goes on (a test
    # that ends synchronously would otherwise stop it re-entrantly).
    yield task.deferLater(reactor, 0, lambda: None)
    return client
