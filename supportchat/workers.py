"""Several processes on one port (the source's SO_REUSEPORT lever).

``reuseport:PORT[:interface=ADDR][:backlog=N]`` is a server endpoint whose
socket has SO_REUSEPORT set, so every process listening on it gets a share
of the connections from the kernel. ``--workers N`` starts N-1 extra
gateway processes (restarted if they die, stopped with the parent) that
listen on the same ports; with Redis in between they form one cluster.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

DEFAULT_BACKLOG = 1024


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP listener with SO_REUSEADDR and SO_REUSEPORT."""

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = DEFAULT_BACKLOG) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory: Any) -> "Deferred[Any]":
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            port = self._reactor.adoptStreamPort(sock.fileno(), family, factory)
        except Exception:
            return fail()
        finally:
            sock.close()  # the reactor holds its own duplicate
        return succeed(port)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        """``reuseport:PORT[:interface=ADDR][:backlog=N]``."""
        port = int(str(args[0]))
        interface = str(kwargs.get("interface", ""))
        backlog = int(str(kwargs.get("backlog", DEFAULT_BACKLOG)))
        return ReusePortEndpoint(reactor, port, interface, backlog)


reuseport_parser = ReusePortParser()


def as_reuseport(desc: str) -> str:
    """``tcp:PORT:...`` -> ``reuseport:PORT:...`` (other endpoints unchanged)."""
    if desc.startswith("tcp:"):
        return "reuseport:" + desc[len("tcp:"):]
    return desc


def die_with_parent(parent_pid: int) -> None:
    """Make this worker get SIGTERM when its parent dies, however it dies
    (Linux PR_SET_PDEATHSIG); exit now if the parent is already gone."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's stop still ends us
        pass
    if os.getppid() != parent_pid:
        raise SystemExit("supportchat worker: parent is gone")


def worker_monitor(reactor: Any, count: int, argv_tail: list[str], env: dict[str, str]) -> ProcessMonitor:
    """A ProcessMonitor running ``count`` gateway workers with these options."""
    import os

    monitor = ProcessMonitor(reactor=reactor)
    monitor.setName("workers")
    for i in range(count):
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "supportchat", "gateway", "--worker-of", str(os.getpid()), *argv_tail]
        worker_env = dict(env)
        if worker_env.get("SUPPORTCHAT_SERVER_NODE_ID"):
            worker_env["SUPPORTCHAT_SERVER_NODE_ID"] += f"-w{i + 1}"
        monitor.addProcess(f"worker-{i + 1}", args, env=worker_env)
    return monitor
