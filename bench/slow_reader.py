#!/usr/bin/env python3
"""A flood at a WebSocket peer that never reads: how much does the server grow?

    .venv/bin/python bench/slow_reader.py                    # this checkout
    .venv/bin/python bench/slow_reader.py --code /tmp/base   # another copy of the code (e.g. `git archive`)
    .venv/bin/python bench/slow_reader.py --messages 10000 [--reading]

Starts the server (twistd, a temporary data directory, 127.0.0.1 only, the
frame rate limit lifted as in bench/run.py), then:

1. a customer (the victim) opens a connection, starts a conversation, and
   stops reading its socket (asyncio ``pause_reading``);
2. an agent accepts the conversation and floods it: messages of ~3.9 KB
   of CJK text (hard to compress), ``--window`` unacknowledged at a time,
   for ``--seconds`` seconds (or ``--messages`` messages);
3. the server's RSS (VmRSS, /proc/<pid>/status) is read before the flood,
   every second during it, and after it; /metrics tells whether the
   server closed the victim.

It prints RSS before/peak/after, the growth, the agent's acknowledged
messages per second (the sender must keep being served), and the
slow-consumer disconnects. Every wait is bounded; the server is stopped
at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from wsclient import Counters, WsClient  # noqa: E402

BODY = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1300))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mint(code: str, secret: str, user: str, role: str) -> str:
    """A token signed like the server's (supportchat.auth from ``code``)."""
    sys.path.insert(0, code)
    from supportchat.auth import TokenIssuer
    from supportchat.config import load_config

    cfg = load_config(None, environ={}, overrides={"auth": {"jwt_secret": secret}})
    return str(TokenIssuer(cfg.auth, secret).mint(user, role, 3600, time.time(), user.title()))


async def http_get(port: int, path: str) -> str:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
    w.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    raw = await asyncio.wait_for(r.read(), 5.0)
    w.close()
    return raw.decode("utf-8", "replace").split("\r\n\r\n", 1)[-1]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Peer:
    """A WsClient with a frame queue."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.client: WsClient | None = None

    def on_text(self, client: WsClient, text: str, wire: int, compressed: bool) -> None:
        self.frames.put_nowait(json.loads(text))

    async def connect(self, port: int, token: str) -> "Peer":
        loop = asyncio.get_running_loop()
        _, self.client = await loop.create_connection(
            lambda: WsClient("127.0.0.1", port, "/ws", token, True, Counters(), self.on_text), "127.0.0.1", port)
        await asyncio.wait_for(self.client.handshake, 10.0)
        await self.next("hello")
        return self

    async def next(self, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, end - time.monotonic()))
            if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame

    def send(self, frame: dict[str, Any]) -> None:
        assert self.client is not None
        self.client.send_text(json.dumps(frame))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_urlsafe(40)
    workdir = tempfile.mkdtemp(prefix="slow-reader-")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=args.code, SUPPORTCHAT_AUTH_JWT_SECRET=secret,
               SUPPORTCHAT_CHAT_FRAME_RATE="1000000", SUPPORTCHAT_CHAT_FRAME_BURST="1000000")
    proc = await asyncio.create_subprocess_exec(
        twistd, "-n", "--pidfile=", "supportchat", "run", "--data-dir", os.path.join(workdir, "data"),
        "--listen", "tcp:0:interface=127.0.0.1", cwd=args.code, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    port = 0
    log: list[str] = []

    async def pump() -> None:
        nonlocal port
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode("utf-8", "replace")
            log.append(text)
            m = re.search(r"Site starting on (\d+)", text)
            if m and not port:
                port = int(m.group(1))

    pumping = asyncio.create_task(pump())
    try:
        for _ in range(300):
            if port:
                break
            await asyncio.sleep(0.1)
        if not port:
            raise RuntimeError("the server did not start:\n" + "".join(log[-20:]))
        victim = await Peer().connect(port, mint(args.code, secret, "victim", "customer"))
        agent = await Peer().connect(port, mint(args.code, secret, "agent", "agent"))
        victim.send({"type": "start", "ref": "s"})
        conv = (await victim.next("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        await agent.next("conversation", ref="a")
        await asyncio.sleep(1.0)
        assert victim.client is not None and victim.client.transport is not None
        if not args.reading:
            victim.client.transport.pause_reading()  # from now on the victim reads nothing
        before = rss_kb(proc.pid)
        samples = [before]
        sent = acked = 0
        start = time.monotonic()
        next_sample = start + 1.0
        while (acked < args.messages) if args.messages else (time.monotonic() - start < args.seconds):
            if args.reading:
                while not victim.frames.empty():
                    victim.frames.get_nowait()
            while sent - acked < args.window and not (args.messages and sent >= args.messages):
                agent.send({"type": "message", "ref": sent, "conversation": conv, "client_msg_id": f"f{sent}",
                            "body": BODY})
                sent += 1
            await agent.next("ack", timeout=30.0)
            acked += 1
            if time.monotonic() >= next_sample:
                samples.append(rss_kb(proc.pid))
                next_sample += 1.0
        flood = time.monotonic() - start
        while acked < sent:
            await agent.next("ack", timeout=30.0)
            acked += 1
        await asyncio.sleep(2.0)
        after = rss_kb(proc.pid)
        samples.append(after)
        text = await http_get(port, "/metrics")
        return {
            "seconds": round(flood, 1),
            "messages_acked": acked,
            "acks_per_second": round(acked / flood, 1),
            "bytes_flooded": acked * len(BODY.encode()),
            "rss_before_kb": before,
            "rss_peak_kb": max(samples),
            "rss_after_kb": after,
            "rss_growth_kb": max(samples) - before,
            "rss_samples_kb": samples,
            "slow_consumer_disconnects": metric(text, "websocket_slow_consumer_disconnects_total"),
            "connections_active_after": metric(text, "websocket_connections_active"),
        }
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.wait({pumping}, timeout=5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", default=ROOT, help="the supportchat checkout to run (default: this one)")
    parser.add_argument("--seconds", type=float, default=25.0, help="how long the agent floods (default 25)")
    parser.add_argument("--messages", type=int, default=0,
                        help="flood exactly this many messages instead of for --seconds (comparable runs)")
    parser.add_argument("--reading", action="store_true",
                        help="control run: the victim reads everything (what the flood costs anyway)")
    parser.add_argument("--window", type=int, default=32, help="unacknowledged messages at a time (default 32)")
    args = parser.parse_args()
    args.code = os.path.abspath(args.code)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
