"""One load-generator process for bench/run.py.

run.py starts several of these and drives them with one JSON command per
line on stdin; each answers with one JSON line on stdout (logs go to
stderr). A process owns its connections: idle ones, customer/agent pairs in
conversations, and the short-lived pairs of the wire-size phase. Both ends
of a pair live in the same process, so send->deliver latency is measured
on one monotonic clock.

Commands: warmup, idle, pairs, activate, load (open loop at a rate, or
closed loop with a window of unacknowledged messages per sender), wire,
counters, quit. Every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import socket
import sys
import time
from typing import Any

import jwt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import serve_lines  # noqa: E402
from corpus import Corpus  # noqa: E402
from wsclient import Counters, WsClient  # noqa: E402

perf = time.perf_counter
SMALL_FRAME = 300  # bytes of the client's message frame (JSON text)
BIG_DELIVERY = 1200  # bytes of the message frame the peer receives (JSON text)
BODY_POOL = 512
OPEN_TIMEOUT = 30.0
REPLY_TIMEOUT = 30.0
TICK = 0.001
MAX_SAMPLES = 250_000


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Conn:
    """A connection and what the worker knows about it."""

    __slots__ = ("ws", "idx", "user", "role", "conv", "peer", "ref", "waiters", "pending", "inflight", "sender")

    def __init__(self, idx: int, user: str, role: str) -> None:
        self.ws: WsClient | None = None
        self.idx = idx
        self.user = user
        self.role = role
        self.conv: str | None = None
        self.peer: Conn | None = None
        self.ref = 0
        self.waiters: dict[Any, asyncio.Future[Any]] = {}  # ref or "event" -> future
        self.pending: dict[int, float] = {}  # ref of a chat message -> send time
        self.inflight = 0
        self.sender = False


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.wid = int(cfg["wid"])
        self.host = cfg["host"]
        self.port = int(cfg["port"])
        self.path = cfg.get("path", "/ws")
        # loopback source addresses to bind client sockets to, round-robin
        # (one address pair has only ~28,000 ephemeral ports); empty: the kernel's choice
        self.sources: list[str] = list(cfg.get("sources") or [])
        self.secret = os.environ["BENCH_JWT_SECRET"]
        self.counters = Counters()
        self.conns: list[Conn] = []
        self.idle: list[Conn] = []
        self.pairs: list[tuple[Conn, Conn]] = []
        self.by_ws: dict[int, Conn] = {}
        self.corpus = Corpus(1000 + self.wid)
        self.small: dict[str, list[str]] = {}
        self.big: dict[str, list[str]] = {}
        self.pick = random.Random(2000 + self.wid)
        self.msg_seq = 0
        self.sent_at: dict[str, float] = {}
        self.reset_stats()
        self.closed_loop = False
        self.wire_log: list[dict[str, Any]] | None = None
        self.next_idx = 0

    # -- statistics --------------------------------------------------------
    def reset_stats(self) -> None:
        self.sent = 0
        self.acked = 0
        self.delivered = 0
        self.errors: dict[str, int] = {}
        self.lat_deliver: list[float] = []
        self.lat_ack: list[float] = []
        self.win_lo = float("inf")
        self.win_hi = float("inf")
        self.t_start = 0.0
        self.timeline: dict[int, list[float]] = {}
        self.delivered_in_win = 0
        self.acked_in_win = 0
        self.sent_in_win = 0

    # -- connections -------------------------------------------------------
    def token(self, user: str, role: str) -> str:
        return jwt.encode({"sub": user, "role": role, "exp": int(time.time()) + 3600}, self.secret, algorithm="HS256")

    async def connect(self, user: str, role: str, deflate: bool = True) -> Conn:
        conn = Conn(self.next_idx, user, role)
        self.next_idx += 1
        hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiters["hello"] = hello
        loop = asyncio.get_running_loop()
        ws = WsClient(self.host, self.port, self.path, self.token(user, role), deflate, self.counters, self.on_text)
        conn.ws = ws
        self.by_ws[id(ws)] = conn
        try:
            if self.sources:
                await asyncio.wait_for(self.connect_from(ws, self.sources[conn.idx % len(self.sources)]),
                                       OPEN_TIMEOUT)
            else:
                await asyncio.wait_for(loop.create_connection(lambda: ws, self.host, self.port), OPEN_TIMEOUT)
            await asyncio.wait_for(ws.handshake, OPEN_TIMEOUT)
            await asyncio.wait_for(hello, OPEN_TIMEOUT)
        except BaseException:
            self.by_ws.pop(id(ws), None)
            if ws.transport is not None:
                ws.transport.abort()
            raise
        self.conns.append(conn)
        return conn

    async def connect_from(self, ws: WsClient, source: str) -> None:
        """TCP connect from ``source`` (port chosen at connect time:
        IP_BIND_ADDRESS_NO_PORT), then hand the socket to ``ws``."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            sock.bind((source, 0))
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.create_connection(lambda: ws, sock=sock)
        except BaseException:
            if ws.transport is None:
                sock.close()
            raise

    async def request(self, conn: Conn, frame: dict[str, Any]) -> dict[str, Any]:
        conn.ref += 1
        frame["ref"] = conn.ref
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiters[conn.ref] = fut
        assert conn.ws is not None
        conn.ws.send_text(dumps(frame))
        result: dict[str, Any] = await asyncio.wait_for(fut, REPLY_TIMEOUT)
        return result

    async def open_pair(self, tag: str, deflate: bool = True) -> tuple[Conn, Conn]:
        customer = await self.connect(f"cust-{tag}", "customer", deflate)
        reply = await self.request(customer, {"type": "start"})
        if reply.get("type") != "conversation":
            raise RuntimeError(f"start answered {reply}")
        conv = reply["conversation"]["id"]
        agent = await self.connect(f"agent-{tag}", "agent", deflate)
        joined: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        customer.waiters["event"] = joined
        reply = await self.request(agent, {"type": "accept", "conversation": conv})
        if reply.get("type") != "conversation":
            raise RuntimeError(f"accept answered {reply}")
        await asyncio.wait_for(joined, REPLY_TIMEOUT)
        customer.conv = agent.conv = conv
        customer.peer, agent.peer = agent, customer
        return customer, agent

    async def bounded(self, n: int, concurrency: int, make: Any) -> tuple[list[Any], dict[str, int]]:
        """Run ``make(i)`` for i < n with at most ``concurrency`` at once."""
        sem = asyncio.Semaphore(concurrency)
        results: list[Any] = []
        failures: dict[str, int] = {}

        async def one(i: int) -> None:
            async with sem:
                try:
                    results.append(await make(i))
                except Exception as e:  # counted and reported, never fatal
                    key = f"{type(e).__name__}: {str(e)[:80]}"
                    failures[key] = failures.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
        return results, failures

    # -- bodies ------------------------------------------------------------
    def bodies(self, conn: Conn) -> None:
        """Prepare body pools sized for this worker's ids (same lengths for
        every conversation since ids have fixed lengths)."""
        if conn.role in self.small:
            return
        assert conn.conv is not None
        cmid = f"w{self.wid}-{conn.idx:05d}-{self.msg_seq + 10**7}"
        probe = {"type": "message", "ref": 100000, "conversation": conn.conv, "client_msg_id": cmid, "body": ""}
        small_len = max(20, SMALL_FRAME - len(dumps(probe)))
        delivered = {
            "type": "message", "conversation": conn.conv, "msg_id": "m" + "0" * 28, "seq": 1000,
            "client_msg_id": cmid, "sender": {"id": conn.user, "role": conn.role}, "kind": "text",
            "body": "", "ts": 1764243035.123456,
        }
        big_len = max(20, BIG_DELIVERY - len(dumps(delivered)))
        self.small[conn.role] = [self.corpus.body(conn.role, small_len) for _ in range(BODY_POOL)]
        self.big[conn.role] = [self.corpus.body(conn.role, big_len) for _ in range(BODY_POOL)]

    def send_chat(self, conn: Conn, big: bool = False) -> int:
        self.bodies(conn)
        pool = (self.big if big else self.small)[conn.role]
        body = pool[self.pick.randrange(BODY_POOL)]
        conn.ref += 1
        self.msg_seq += 1
        cmid = f"w{self.wid}-{conn.idx:05d}-{self.msg_seq + 10**7}"
        text = dumps({"type": "message", "ref": conn.ref, "conversation": conn.conv, "client_msg_id": cmid, "body": body})
        now = perf()
        conn.pending[conn.ref] = now
        self.sent_at[cmid] = now
        conn.inflight += 1
        self.sent += 1
        if self.win_lo <= now <= self.win_hi:
            self.sent_in_win += 1
        assert conn.ws is not None
        n = conn.ws.send_text(text)
        if self.wire_log is not None:
            self.wire_log.append({"dir": "up", "json": len(text.encode()), "wire": n, "big": big})
        return n

    # -- frames in ---------------------------------------------------------
    def on_text(self, ws: WsClient, text: str, wire: int, compressed: bool) -> None:
        now = perf()
        conn = self.by_ws.get(id(ws))
        if conn is None:
            return
        try:
            f = json.loads(text)
        except ValueError:
            self.count_error("non_json")
            return
        kind = f.get("type")
        if kind == "message":
            if f.get("kind") == "text":
                sent = self.sent_at.pop(f.get("client_msg_id"), None)
                if sent is None:
                    return
                self.delivered += 1
                if self.win_lo <= sent <= self.win_hi:
                    lat = now - sent
                    self.lat_deliver.append(lat)
                    slot = self.timeline.get(int((sent - self.t_start) * 10))
                    if slot is None:
                        self.timeline[int((sent - self.t_start) * 10)] = [1, lat]
                    else:
                        slot[0] += 1
                        if lat > slot[1]:
                            slot[1] = lat
                if self.win_lo <= now <= self.win_hi:
                    self.delivered_in_win += 1
                if self.wire_log is not None:
                    self.wire_log.append({"dir": "down", "json": len(text.encode()), "wire": wire,
                                          "compressed": compressed, "big": len(text) > 800})
            else:
                fut = conn.waiters.pop("event", None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
        elif kind == "ack":
            ref = f.get("ref")
            sent = conn.pending.pop(ref, None)
            if sent is not None:
                self.acked += 1
                conn.inflight -= 1
                if self.win_lo <= sent <= self.win_hi:
                    self.lat_ack.append(now - sent)
                if self.win_lo <= now <= self.win_hi:
                    self.acked_in_win += 1
                if self.wire_log is not None:
                    self.wire_log.append({"dir": "ack", "json": len(text.encode()), "wire": wire})
                if self.closed_loop and conn.sender:
                    self.send_chat(conn)
        elif kind == "hello":
            fut = conn.waiters.pop("hello", None)
            if fut is not None and not fut.done():
                fut.set_result(f)
        elif kind == "error":
            self.count_error(str(f.get("code")))
            ref = f.get("ref")
            fut = conn.waiters.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError(f"error frame {f.get('code')}: {f.get('message')}"))
            elif conn.pending.pop(ref, None) is not None:
                conn.inflight -= 1
                if self.closed_loop and conn.sender:
                    self.send_chat(conn)
        else:  # conversation, pong, ...
            ref = f.get("ref")
            if ref is not None:
                fut = conn.waiters.pop(ref, None)
                if fut is not None and not fut.done():
                    fut.set_result(f)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # -- phases ------------------------------------------------------------
    async def drain(self, timeout: float) -> dict[str, int]:
        """Wait (bounded) for every ack and delivery still outstanding."""
        deadline = perf() + timeout
        while perf() < deadline:
            unacked = sum(len(c.pending) for c in self.conns)
            if not unacked and not self.sent_at:
                break
            await asyncio.sleep(0.02)
        return {"unacked": sum(len(c.pending) for c in self.conns), "undelivered": len(self.sent_at)}

    async def cmd_warmup(self, msg: dict[str, Any]) -> dict[str, Any]:
        customer, agent = await self.open_pair(f"w{self.wid}-warm")
        for i in range(int(msg.get("messages", 20))):
            for c in (customer, agent):
                self.send_chat(c, big=(i % 4 == 0))
        drained = await self.drain(10.0)
        for c in (customer, agent):
            await self.close_conns([c])
        self.sent_at.clear()
        self.reset_stats()
        return {"drained": drained}

    async def cmd_idle(self, msg: dict[str, Any]) -> dict[str, Any]:
        n = int(msg["n"])
        base = len(self.idle)
        t0 = perf()

        async def make(i: int) -> Conn:
            return await self.connect(f"idle-w{self.wid}-{base + i}", "customer", bool(msg.get("deflate", True)))

        conns, failures = await self.bounded(n, int(msg.get("concurrency", 32)), make)
        self.idle.extend(conns)
        return {"opened": len(conns), "failures": failures, "seconds": perf() - t0,
                "deflate": sum(1 for c in conns if c.ws is not None and c.ws.deflate)}

    async def cmd_pairs(self, msg: dict[str, Any]) -> dict[str, Any]:
        n = int(msg["n"])
        base = len(self.pairs)
        t0 = perf()

        async def make(i: int) -> tuple[Conn, Conn]:
            return await self.open_pair(f"w{self.wid}-{base + i}")

        pairs, failures = await self.bounded(n, int(msg.get("concurrency", 16)), make)
        for customer, agent in pairs:
            customer.sender = agent.sender = True
        self.pairs.extend(pairs)
        ext = pairs[0][0].ws.extension if pairs and pairs[0][0].ws else ""
        return {"opened": len(pairs), "failures": failures, "seconds": perf() - t0, "extension": ext}

    async def cmd_activate(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Every pair connection sends one 1.2 KB and one 300 B message, so
        the server holds an inflater and a deflater for each of them."""
        for customer, agent in self.pairs:
            for c in (customer, agent):
                self.send_chat(c, big=True)
                self.send_chat(c)
        drained = await self.drain(float(msg.get("timeout", 30.0)))
        out = {"sent": self.sent, "acked": self.acked, "delivered": self.delivered, "errors": self.errors, **drained}
        self.sent_at.clear()
        self.reset_stats()
        return out

    async def cmd_load(self, msg: dict[str, Any]) -> dict[str, Any]:
        mode = msg["mode"]
        duration = float(msg["duration"])
        warmup = float(msg["warmup"])
        senders = [c for pair in self.pairs for c in pair]
        if not senders:
            return {"error": "no pairs"}
        self.reset_stats()
        c0 = (self.counters.bytes_in, self.counters.bytes_out, self.counters.frames_in, self.counters.frames_out)
        start = perf()
        self.t_start = start
        self.win_lo = start + warmup
        self.win_hi = start + duration
        lags: list[float] = []
        if mode == "open":
            rate = float(msg["rate"])
            i = 0
            end = start + duration
            while True:
                now = perf()
                if now >= end:
                    break
                due = int((now - start) * rate)
                while i < due:
                    sched = start + i / rate
                    self.send_chat(senders[i % len(senders)])
                    if sched >= self.win_lo:
                        lags.append(perf() - sched)
                    i += 1
                await asyncio.sleep(TICK)
        else:
            window = int(msg["window"])
            self.closed_loop = True
            for _ in range(window):
                for c in senders:
                    self.send_chat(c)
            await asyncio.sleep(duration)
            self.closed_loop = False
        sending_done = perf()
        drained = await self.drain(float(msg.get("drain", 10.0)))
        c1 = (self.counters.bytes_in, self.counters.bytes_out, self.counters.frames_in, self.counters.frames_out)
        window_len = self.win_hi - self.win_lo
        out = {
            "mode": mode,
            "start_epoch": round(time.time() - (perf() - start), 3),
            "senders": len(senders),
            "window_seconds": window_len,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "sent_in_window": self.sent_in_win,
            "acked_in_window": self.acked_in_win,
            "delivered_in_window": self.delivered_in_win,
            "errors": self.errors,
            "bytes_in": c1[0] - c0[0],
            "bytes_out": c1[1] - c0[1],
            "frames_in": c1[2] - c0[2],
            "frames_out": c1[3] - c0[3],
            "lat_deliver": thin(self.lat_deliver),
            "lat_ack": thin(self.lat_ack),
            "send_lag": thin(lags),
            "timeline": [[k / 10, v[0], round(v[1] * 1000, 2)] for k, v in sorted(self.timeline.items())],
            "sending_seconds": sending_done - start,
            **drained,
        }
        self.sent_at.clear()
        for c in senders:
            c.pending.clear()
            c.inflight = 0
        self.reset_stats()
        return out

    async def cmd_wire(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Fresh pairs; each customer sends ``small`` 300 B then ``big``
        1.2 KB messages one at a time, waiting for the delivery of each.
        Returns the size on the wire of every frame involved."""
        deflate = bool(msg["deflate"])
        n = int(msg.get("pairs", 10))
        tag = "d" if deflate else "n"
        pairs, failures = await self.bounded(
            n, 4, lambda i: self.open_pair(f"w{self.wid}-wire{tag}-{i}", deflate))
        logs: list[list[dict[str, Any]]] = []
        extension = pairs[0][0].ws.extension if pairs and pairs[0][0].ws else ""
        for customer, _agent in pairs:
            self.wire_log = []
            for big, count in ((False, int(msg.get("small", 10))), (True, int(msg.get("big", 10)))):
                for _ in range(count):
                    self.send_chat(customer, big=big)
                    await self.drain(5.0)
            logs.append(self.wire_log)
            self.wire_log = None
        await self.close_conns([c for pair in pairs for c in pair])
        self.sent_at.clear()
        self.reset_stats()
        return {"deflate": deflate, "extension": extension, "failures": failures, "logs": logs}

    async def close_conns(self, conns: list[Conn]) -> None:
        for c in conns:
            if c.ws is not None:
                c.ws.close()
        waits = [c.ws.lost for c in conns if c.ws is not None]
        if waits:
            done, pending = await asyncio.wait(waits, timeout=10.0)
            for c in conns:
                if c.ws is not None and c.ws.transport is not None and not c.ws.lost.done():
                    c.ws.transport.abort()
        for c in conns:
            if c.ws is not None:
                self.by_ws.pop(id(c.ws), None)
            if c in self.conns:
                self.conns.remove(c)

    async def cmd_quit(self, msg: dict[str, Any]) -> dict[str, Any]:
        conns = list(self.conns)
        for c in conns:
            if c.ws is not None:
                c.ws.close()
        waits = [c.ws.lost for c in conns if c.ws is not None]
        if waits:
            await asyncio.wait(waits, timeout=float(msg.get("timeout", 10.0)))
        for c in conns:
            if c.ws is not None and c.ws.transport is not None and not c.ws.lost.done():
                c.ws.transport.abort()
        return {"closed": len(conns)}

    def cmd_counters(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"bytes_in": self.counters.bytes_in, "bytes_out": self.counters.bytes_out,
                "connections": len(self.conns), "fds": len(os.listdir("/proc/self/fd"))}


def thin(samples: list[float]) -> list[float]:
    """Latencies in milliseconds, evenly thinned to at most MAX_SAMPLES."""
    if len(samples) > MAX_SAMPLES:
        step = len(samples) / MAX_SAMPLES
        samples = [samples[int(i * step)] for i in range(MAX_SAMPLES)]
    return [round(s * 1000.0, 4) for s in samples]


def _settle(cmd: str) -> None:
    """Long-lived connection objects leave the collector's view so that the
    generator's own GC pauses stay short."""
    if cmd in ("idle", "pairs", "activate"):
        gc.collect()
        gc.freeze()


async def main() -> None:
    await serve_lines(Worker, "worker", _settle)


if __name__ == "__main__":
    asyncio.run(main())
