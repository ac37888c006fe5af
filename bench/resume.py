"""Reconnecting, resuming clients: the load generator of bench/storm.py.

bench/storm.py starts several of these processes and drives each with one
JSON command per line on stdin; each answers with one JSON line on stdout
(logs go to stderr). Commands: open, status, load, stop, drain, report,
quit. Every wait is bounded.

A client here does what the widget's client (supportchat/web/sc-client.js)
does when its connection drops:

- it reconnects after a full-jitter exponential backoff
  (``backoff_delay``: random in [0, min(15 s, 0.5 s * 2^attempt)], at least
  0.25 s; the attempt count resets at each ``hello``), holding on to its
  token (a browser does not fetch a new one per attempt);
- after ``hello`` it syncs its conversation from the last contiguous seq it
  has processed (``sync`` pages of 200 until ``has_more`` is false), and
  a live message whose seq skips ahead triggers the same sync;
- it resends every message of its outbox that has no ack yet, with the same
  ``client_msg_id``; ``unavailable`` and ``rate_limited`` answers are
  retried on the same connection after a short backoff;
- it processes each (conversation, seq) once: a message that arrives both
  live and by ``sync`` counts as "redelivered, deduped", and the stored
  copy of one of its own pending messages confirms it as an ack would.

Both ends of every customer/agent pair live in the same process, so the
exactly-once check (``exactly_once``) has all it needs locally: what each
sender got acknowledged, what each receiver processed, and the server's
log of the conversation read with a final ``sync`` from 0.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import json
import math
import os
import random
import re
import sys
import time
from typing import Any

import jwt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import serve_lines  # noqa: E402
from wsclient import Counters, HandshakeError, WsClient  # noqa: E402

perf = time.perf_counter
wall = time.time
# TCP connect + upgrade + hello of one attempt. The widget sets no timeout
# of its own (the browser gives up on a dead TCP connection much later), so
# this is only a bound: a shorter one makes clients queued at a busy server
# start over at the back of the queue.
OPEN_TIMEOUT = 90.0
REPLY_TIMEOUT = 30.0
SYNC_LIMIT = 200
TICK = 0.002
BODY_LEN = 180
GAP_WAIT = 0.5  # sc-client.js syncs at once; waiting lets an ack in flight close the gap first
_STATUS = re.compile(r"refused: \S+ (\d{3})")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    """Mark a future's exception as seen (its attempt was already given up)."""
    if not fut.cancelled():
        fut.exception()


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 15.0,
                  floor: float = 0.25) -> float:
    """sc-client.js's backoffDelay, in seconds."""
    return max(floor, rng.random() * min(cap, base * 2 ** min(attempt, 16)))


def exactly_once(acked: dict[str, tuple[str, int]], received: list[tuple[str, int, str]],
                 logs: dict[str, list[tuple[int, str | None]]]) -> dict[str, Any]:
    """The exactly-once verdict.

    ``acked``: client_msg_id -> (conversation, seq) of every message whose
    sender got an ack (or saw its stored copy); ``received``: (conversation,
    seq, client_msg_id) of every peer message a receiver processed, each
    receiver having dropped repeats of a seq already processed; ``logs``:
    conversation -> [(seq, client_msg_id)] as a final ``sync`` from 0 read
    it (events have no client_msg_id).

    Every acked message must have been processed by its receiver exactly
    once, at the acked seq; the log must hold seqs 1..n without a gap or a
    repeat, each client_msg_id once, every acked one at its acked seq."""
    got: dict[str, list[tuple[str, int]]] = {}
    for conv, seq, cmid in received:
        got.setdefault(cmid, []).append((conv, seq))
    missing: list[str] = []
    duplicated: list[str] = []
    wrong_seq: list[str] = []
    once = 0
    for cmid, where in acked.items():
        seen = got.get(cmid, [])
        if not seen:
            missing.append(cmid)
        elif len(seen) > 1:
            duplicated.append(cmid)
        elif seen[0] != where:
            wrong_seq.append(cmid)
        else:
            once += 1
    unacked_received = sum(1 for cmid in got if cmid not in acked)
    gaps = 0
    repeated = 0
    stored: dict[str, tuple[str, int]] = {}
    messages = 0
    for conv, entries in logs.items():
        seqs = [s for s, _ in entries]
        messages += len(seqs)
        if seqs != list(range(1, len(seqs) + 1)):
            gaps += 1
        for seq, key in entries:
            if key is None:
                continue
            if key in stored:
                repeated += 1
            else:
                stored[key] = (conv, seq)
    not_in_log = 0
    wrong_in_log = 0
    for cmid, where in acked.items():
        if where[0] not in logs:
            continue  # conversation not read at the end (counted by the caller)
        if cmid not in stored:
            not_in_log += 1
        elif stored[cmid] != where:
            wrong_in_log += 1
    ok = not (missing or duplicated or wrong_seq or gaps or repeated or not_in_log or wrong_in_log)
    return {
        "acked": len(acked), "delivered_once": once, "missing": len(missing), "duplicated": len(duplicated),
        "wrong_seq": len(wrong_seq), "received_unacked": unacked_received,
        "examples": {"missing": missing[:5], "duplicated": duplicated[:5], "wrong_seq": wrong_seq[:5]},
        "log": {"conversations": len(logs), "messages": messages, "conversations_with_gaps": gaps,
                "repeated_client_msg_id": repeated, "acked_not_in_log": not_in_log,
                "acked_at_other_seq": wrong_in_log},
        "ok": ok,
    }


class Out:
    """A message of a client's outbox."""

    __slots__ = ("cmid", "text", "created", "created_wall", "ws", "sends")

    def __init__(self, cmid: str, text: str) -> None:
        self.cmid = cmid
        self.text = text
        self.created = perf()
        self.created_wall = wall()
        self.ws: WsClient | None = None  # the connection it was last sent on
        self.sends = 0


class Client:
    __slots__ = ("idx", "user", "role", "token", "src", "ws", "state", "ref", "waiters", "refs", "conv", "peer",
                 "seen", "contig", "syncing", "resync", "outbox", "attempt", "attempts", "dropped_at", "drops",
                 "hello_seen", "recv")

    def __init__(self, idx: int, user: str, role: str, token: str, src: str) -> None:
        self.idx = idx
        self.user = user
        self.role = role
        self.token = token
        self.src = src
        self.ws: WsClient | None = None
        self.state = "down"  # down | connecting | open
        self.ref = 0
        self.waiters: dict[Any, asyncio.Future[Any]] = {}
        self.refs: dict[int, str] = {}  # ref of a message frame -> client_msg_id
        self.conv: str | None = None
        self.peer: Client | None = None
        self.seen: set[int] = set()  # seqs processed in self.conv
        self.contig = 0  # highest seq with every seq up to it processed
        self.syncing = False
        self.resync = False
        self.outbox: dict[str, Out] = {}
        self.attempt = 0
        self.attempts = 0  # connection attempts since the last drop
        self.dropped_at: float | None = None
        self.drops = 0
        self.hello_seen = False
        self.recv: list[tuple[int, str]] = []  # (seq, client_msg_id) of peer messages processed


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.wid = int(cfg["wid"])
        self.host = cfg["host"]
        self.port = int(cfg["port"])
        self.path = cfg.get("path", "/ws")
        self.src = str(cfg.get("source", "127.0.0.1"))
        self.secret = os.environ["BENCH_JWT_SECRET"]
        self.counters = Counters()
        self.rng = random.Random(3000 + self.wid)
        self.clients: list[Client] = []
        self.pairs: list[tuple[Client, Client]] = []
        self.by_ws: dict[int, Client] = {}
        self.msg_n = 0
        self.filler = "".join(self.rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(BODY_LEN))
        self.acked: dict[str, tuple[str, int]] = {}
        self.ack_kind = {"ack": 0, "duplicate_ack": 0, "stored_copy": 0}
        self.ack_mismatch = 0
        self.created: dict[str, tuple[float, float]] = {}  # cmid -> (perf, wall) when the user sent it
        self.sent = 0
        self.resent = 0
        self.redelivered = {"live": 0, "sync": 0}
        self.got: set[str] = set()  # client_msg_ids processed by their receiver
        self.failed_msgs: dict[str, int] = {}
        # event log (wall-clock times), bucketed by the report
        self.ev_attempt: list[float] = []
        self.ev_handshake: list[float] = []
        self.ev_hello: list[float] = []
        self.ev_back: list[tuple[float, float, int]] = []  # (time back, time dropped, attempts)
        self.ev_drop: list[float] = []
        self.ev_refusal: list[tuple[float, str]] = []
        self.ev_error: list[tuple[float, str]] = []
        self.ev_deliver: list[tuple[float, float, str]] = []  # (created wall, latency ms, via)
        self.ev_ack: list[float] = []
        self.sending: asyncio.Task[None] | None = None
        self.stop_sending = False
        self.initial = True
        self.quitting = False  # quit closes every connection: no reconnecting then

    # -- connections -------------------------------------------------------
    def token(self, user: str, role: str) -> str:
        return jwt.encode({"sub": user, "role": role, "exp": int(time.time()) + 4 * 3600}, self.secret,
                          algorithm="HS256")

    def new_client(self, user: str, role: str) -> Client:
        c = Client(len(self.clients), user, role, self.token(user, role), self.src)
        self.clients.append(c)
        return c

    async def connect(self, c: Client) -> bool:
        """One attempt: TCP, upgrade, hello. True when hello arrived."""
        loop = asyncio.get_running_loop()
        c.state = "connecting"
        c.attempts += 1
        c.hello_seen = False
        now = wall()
        if not self.initial:
            self.ev_attempt.append(now)
        hello: asyncio.Future[Any] = loop.create_future()
        c.waiters["hello"] = hello
        ws = WsClient(self.host, self.port, self.path, c.token, True, self.counters, self.on_text)
        c.ws = ws
        self.by_ws[id(ws)] = c
        ws.lost.add_done_callback(functools.partial(self._lost_cb, c, ws))
        ws.handshake.add_done_callback(_retrieve)
        deadline = perf() + OPEN_TIMEOUT
        stage = "connect"
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: ws, self.host, self.port, local_addr=(self.src, 0)),
                OPEN_TIMEOUT)
            stage = "upgrade"
            # shielded: a timeout must not cancel the future WsClient completes later
            await asyncio.wait_for(asyncio.shield(ws.handshake), max(0.01, deadline - perf()))
            if not self.initial:
                self.ev_handshake.append(wall())
            stage = "hello"
            await asyncio.wait_for(hello, max(0.01, deadline - perf()))
        except (HandshakeError, OSError, asyncio.TimeoutError, ConnectionError) as e:
            self.refused(e, stage)
            c.waiters.pop("hello", None)
            if ws.transport is not None:
                ws.transport.abort()
            if c.ws is ws:
                c.ws = None
                c.state = "down"
            self.by_ws.pop(id(ws), None)
            return False
        return True

    def refused(self, e: BaseException, stage: str) -> None:
        if isinstance(e, HandshakeError):
            m = _STATUS.search(str(e))
            kind = f"http_{m.group(1)}" if m else f"lost_in_{stage}"
        elif isinstance(e, asyncio.TimeoutError):
            kind = f"timeout_in_{stage}"
        elif isinstance(e, ConnectionError) and e.errno is None:
            kind = f"lost_in_{stage}"
        elif isinstance(e, OSError) and e.errno is not None:
            kind = errno.errorcode.get(e.errno, str(e.errno))
        else:
            kind = type(e).__name__
        self.ev_refusal.append((wall(), kind))

    def _lost_cb(self, c: Client, ws: WsClient, _fut: Any) -> None:
        self.on_lost(c, ws)

    def on_lost(self, c: Client, ws: WsClient) -> None:
        self.by_ws.pop(id(ws), None)
        if c.ws is not ws:
            return
        c.ws = None
        for fut in c.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
                fut.exception()  # retrieved: whoever awaits it still gets it, nobody else logs it
        c.waiters.clear()
        c.refs.clear()
        c.syncing = False
        was_open = c.state == "open"
        c.state = "down"
        if was_open and not self.initial and not self.quitting:
            c.dropped_at = wall()
            c.drops += 1
            c.attempts = 0
            self.ev_drop.append(c.dropped_at)
            self.schedule(c)

    def schedule(self, c: Client) -> None:
        delay = backoff_delay(c.attempt, self.rng)
        c.attempt += 1
        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self.reconnect(c)))

    async def reconnect(self, c: Client) -> None:
        if c.state != "down":
            return
        if not await self.connect(c):
            self.schedule(c)

    def on_hello(self, c: Client) -> None:
        c.state = "open"
        c.hello_seen = True
        c.attempt = 0
        now = wall()
        if not self.initial:
            self.ev_hello.append(now)
        if c.dropped_at is not None:
            self.ev_back.append((now, c.dropped_at, c.attempts))
            c.dropped_at = None
        if c.conv is not None and not self.initial:
            asyncio.ensure_future(self.sync(c))
            for o in list(c.outbox.values()):
                self.send(c, o)

    # -- requests ----------------------------------------------------------
    async def request(self, c: Client, frame: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        if c.ws is None or c.state == "down":
            raise ConnectionError("not connected")
        c.ref += 1
        frame["ref"] = c.ref
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        c.waiters[c.ref] = fut
        c.ws.send_text(dumps(frame))
        try:
            result: dict[str, Any] = await asyncio.wait_for(fut, timeout)
        finally:
            c.waiters.pop(frame["ref"], None)
        return result

    async def sync(self, c: Client) -> None:
        """From the last contiguous seq until caught up (sc-client.js's syncConversation)."""
        if c.syncing:
            c.resync = True
            return
        c.syncing = True
        try:
            while c.state == "open":
                c.resync = False
                h = await self.request(c, {"type": "sync", "conversation": c.conv, "after_seq": c.contig,
                                           "limit": SYNC_LIMIT})
                if h.get("type") != "history":
                    raise RuntimeError(f"sync answered {h.get('type')}: {h.get('code')}")
                msgs = h.get("messages") or []
                for m in msgs:
                    self.receive(c, m, "sync")
                if not msgs or (not h.get("has_more") and not c.resync):
                    break
        except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError):
            pass  # the next hello syncs again
        except RuntimeError as e:
            self.ev_error.append((wall(), f"sync:{str(e)[:60]}"))
        finally:
            c.syncing = False

    # -- messages ----------------------------------------------------------
    def new_message(self, c: Client) -> None:
        self.msg_n += 1
        cmid = f"s{self.wid}-{c.idx}-{self.msg_n}"
        body = f"{cmid} {self.filler}"
        o = Out(cmid, body)
        c.outbox[cmid] = o
        self.created[cmid] = (o.created, o.created_wall)
        self.sent += 1
        if c.state == "open":
            self.send(c, o)

    def send(self, c: Client, o: Out) -> None:
        if c.ws is None or c.state != "open" or o.ws is c.ws:
            return
        c.ref += 1
        c.refs[c.ref] = o.cmid
        o.ws = c.ws
        o.sends += 1
        if o.sends > 1:
            self.resent += 1
        c.ws.send_text(dumps({"type": "message", "ref": c.ref, "conversation": c.conv, "client_msg_id": o.cmid,
                              "body": o.text}))

    def confirm(self, c: Client, cmid: str, seq: int, how: str) -> None:
        """One of c's messages is stored at seq (ack, duplicate ack, or its stored copy seen)."""
        assert c.conv is not None
        prev = self.acked.get(cmid)
        if prev is not None and prev != (c.conv, seq):
            self.ack_mismatch += 1
        o = c.outbox.pop(cmid, None)
        if o is not None:
            self.acked[cmid] = (c.conv, seq)
            self.ack_kind[how] += 1
            self.ev_ack.append(wall())
        self.mark(c, seq)

    def mark(self, c: Client, seq: int) -> bool:
        """Record seq as processed; False when it already was."""
        if seq in c.seen:
            return False
        c.seen.add(seq)
        while c.contig + 1 in c.seen:
            c.contig += 1
        return True

    def receive(self, c: Client, m: dict[str, Any], via: str) -> None:
        seq = m.get("seq")
        if not isinstance(seq, int) or m.get("conversation") != c.conv:
            return
        cmid = m.get("client_msg_id")
        sender = m.get("sender") or {}
        own = sender.get("id") == c.user and (sender.get("role") == "customer") == (c.role == "customer")
        if own:
            if cmid in c.outbox:
                self.confirm(c, cmid, seq, "stored_copy")
            else:
                self.mark(c, seq)
            return
        if not self.mark(c, seq):
            self.redelivered[via] += 1
            return
        if m.get("kind") == "text" and isinstance(cmid, str):
            c.recv.append((seq, cmid))
            self.got.add(cmid)
            made = self.created.get(cmid)
            if made is not None:
                self.ev_deliver.append((made[1], (perf() - made[0]) * 1000.0, via))
        if via == "live" and seq > c.contig and not c.syncing:
            # a gap (an own ack still on its way, or a delivery lost): sync
            # from the last contiguous seq if it is still there in a moment
            asyncio.get_running_loop().call_later(GAP_WAIT, self.fill_gap, c, seq)

    def fill_gap(self, c: Client, seq: int) -> None:
        if c.contig < seq and c.state == "open" and not c.syncing:
            asyncio.ensure_future(self.sync(c))

    # -- frames in ---------------------------------------------------------
    def on_text(self, ws: WsClient, text: str, wire: int, compressed: bool) -> None:
        c = self.by_ws.get(id(ws))
        if c is None or c.ws is not ws:
            return
        try:
            f = json.loads(text)
        except ValueError:
            return
        kind = f.get("type")
        ref = f.get("ref")
        if kind == "message":
            if c.conv is not None and not self.initial:
                self.receive(c, f, "live")
            elif f.get("kind") == "event":
                fut = c.waiters.pop("event", None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
        elif kind == "ack":
            cmid = c.refs.pop(ref, None) if ref is not None else None
            cmid = f.get("client_msg_id") or cmid
            if isinstance(cmid, str) and isinstance(f.get("seq"), int):
                self.confirm(c, cmid, f["seq"], "duplicate_ack" if f.get("duplicate") else "ack")
        elif kind == "hello":
            fut = c.waiters.pop("hello", None)
            if fut is not None and not fut.done():
                fut.set_result(f)
            self.on_hello(c)
        elif kind == "error":
            code = str(f.get("code"))
            self.ev_error.append((wall(), code))
            cmid = c.refs.pop(ref, None) if ref is not None else None
            if cmid is not None:
                o = c.outbox.get(cmid)
                if o is None:
                    return
                if code in ("unavailable", "rate_limited"):
                    o.ws = None  # resend on this connection after a short backoff
                    delay = backoff_delay(1, self.rng, 0.5, 4.0)
                    retry = f.get("retry_after")
                    if isinstance(retry, (int, float)) and retry > 0:
                        delay = max(delay, float(retry))
                    asyncio.get_running_loop().call_later(delay, self.send, c, o)
                else:
                    c.outbox.pop(cmid, None)
                    self.failed_msgs[code] = self.failed_msgs.get(code, 0) + 1
                return
            fut = c.waiters.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_result(f)
        elif ref is not None:
            fut = c.waiters.pop(ref, None)
            if fut is not None and not fut.done():
                fut.set_result(f)

    # -- setup -------------------------------------------------------------
    async def bounded(self, n: int, concurrency: int, make: Any) -> tuple[int, dict[str, int]]:
        sem = asyncio.Semaphore(concurrency)
        done = 0
        failures: dict[str, int] = {}

        async def one(i: int) -> None:
            nonlocal done
            async with sem:
                for _ in range(3):
                    try:
                        await make(i)
                        done += 1
                        return
                    except Exception as e:  # counted, retried twice, never fatal
                        key = f"{type(e).__name__}: {str(e)[:80]}"
                        failures[key] = failures.get(key, 0) + 1
                        await asyncio.sleep(0.5)

        await asyncio.gather(*(one(i) for i in range(n)))
        return done, failures

    async def open_client(self, c: Client) -> None:
        if not await self.connect(c):
            raise ConnectionError("could not connect")

    async def open_pair(self, i: int) -> None:
        tag = f"s{self.wid}-{i}"
        customer = self.new_client(f"cust-{tag}", "customer")
        agent = self.new_client(f"agent-{tag}", "agent")
        await self.open_client(customer)
        reply = await self.request(customer, {"type": "start"})
        if reply.get("type") != "conversation":
            raise RuntimeError(f"start answered {reply.get('type')} {reply.get('code')}")
        conv = reply["conversation"]["id"]
        await self.open_client(agent)
        joined: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        customer.waiters["event"] = joined
        reply = await self.request(agent, {"type": "accept", "conversation": conv})
        if reply.get("type") != "conversation":
            raise RuntimeError(f"accept answered {reply.get('type')} {reply.get('code')}")
        await asyncio.wait_for(joined, REPLY_TIMEOUT)
        customer.conv = agent.conv = conv
        customer.peer, agent.peer = agent, customer
        self.pairs.append((customer, agent))

    async def cmd_open(self, msg: dict[str, Any]) -> dict[str, Any]:
        t0 = perf()
        conc = int(msg.get("concurrency", 32))
        pairs, pfail = await self.bounded(int(msg["pairs"]), max(1, conc // 2), self.open_pair)
        base = len(self.clients)

        async def idle(i: int) -> None:
            await self.open_client(self.new_client(f"idle-s{self.wid}-{base + i}", "customer"))

        idles, ifail = await self.bounded(int(msg["idle"]), conc, idle)
        # the starting point of every pair: its log so far (events)
        for customer, agent in self.pairs:
            for c in (customer, agent):
                h = await self.request(c, {"type": "sync", "conversation": c.conv, "after_seq": 0,
                                           "limit": SYNC_LIMIT})
                for m in h.get("messages") or []:
                    self.mark(c, int(m["seq"]))
        # connections that failed for good during setup stay out of the run
        self.clients = [c for c in self.clients if c.state == "open"]
        self.pairs = [(a, b) for a, b in self.pairs if a.state == "open" and b.state == "open"]
        if msg.get("last", True):
            self.initial = False  # from now on, drops are reconnected and counted
        gc.collect()
        gc.freeze()
        return {"pairs": pairs, "idle": idles, "open": len(self.clients), "failures": {**pfail, **ifail},
                "seconds": round(perf() - t0, 2)}

    # -- phases ------------------------------------------------------------
    def cmd_status(self, msg: dict[str, Any]) -> dict[str, Any]:
        states = {"open": 0, "connecting": 0, "down": 0}
        for c in self.clients:
            states[c.state] += 1
        return {"clients": len(self.clients), **states, "dropped": sum(1 for c in self.clients if c.drops),
                "outbox": sum(len(c.outbox) for c in self.clients)}

    async def _send_loop(self, rate: float) -> None:
        senders = [c for pair in self.pairs for c in pair]
        if not senders or rate <= 0:
            return
        start = perf()
        i = 0
        while not self.stop_sending:
            due = int((perf() - start) * rate)
            while i < due:
                self.new_message(senders[i % len(senders)])
                i += 1
            await asyncio.sleep(TICK)

    def cmd_load(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.stop_sending = False
        self.sending = asyncio.ensure_future(self._send_loop(float(msg["rate"])))
        return {"senders": 2 * len(self.pairs)}

    async def cmd_stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.stop_sending = True
        if self.sending is not None:
            await asyncio.wait({self.sending}, timeout=5.0)
        return {"sent": self.sent}

    def undelivered(self) -> int:
        """Acked messages their receiver has not processed yet."""
        return sum(1 for cmid in self.acked if cmid not in self.got)

    async def cmd_drain(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Wait (bounded) until every outbox is empty and every acked message
        was processed by its receiver; a sync per conversation every few
        seconds repairs what pub/sub lost."""
        deadline = perf() + float(msg.get("bound", 30.0))
        next_sync = perf() + 3.0
        t0 = perf()
        while perf() < deadline:
            outbox = sum(len(c.outbox) for c in self.clients)
            down = sum(1 for c in self.clients if c.state != "open")
            missing = self.undelivered()
            if not outbox and not missing and not down:
                break
            if perf() >= next_sync:
                next_sync = perf() + 3.0
                for a, b in self.pairs:
                    for c in (a, b):
                        if c.state == "open":
                            asyncio.ensure_future(self.sync(c))
            await asyncio.sleep(0.1)
        return {"outbox": sum(len(c.outbox) for c in self.clients), "undelivered": self.undelivered(),
                "down": sum(1 for c in self.clients if c.state != "open"), "seconds": round(perf() - t0, 2)}

    async def full_log(self, c: Client) -> list[tuple[int, str | None]]:
        out: list[tuple[int, str | None]] = []
        after = 0
        for _ in range(10000):
            h = await self.request(c, {"type": "sync", "conversation": c.conv, "after_seq": after, "limit": 500})
            msgs = h.get("messages") or []
            for m in msgs:
                out.append((int(m["seq"]), m.get("client_msg_id")))
            if not msgs or not h.get("has_more"):
                break
            after = int(msgs[-1]["seq"])
        return out

    async def cmd_report(self, msg: dict[str, Any]) -> dict[str, Any]:
        t_kill = float(msg["t_kill"])
        logs: dict[str, list[tuple[int, str | None]]] = {}
        unread = 0
        sem = asyncio.Semaphore(16)

        async def read(customer: Client, agent: Client) -> None:
            nonlocal unread
            async with sem:
                for c in (agent, customer):
                    if c.state == "open":
                        try:
                            logs[str(c.conv)] = await self.full_log(c)
                            return
                        except Exception:
                            pass
                unread += 1

        await asyncio.gather(*(read(a, b) for a, b in self.pairs))
        received = [(str(c.conv), seq, cmid) for a, b in self.pairs for c in (a, b) for seq, cmid in c.recv]
        verdict = exactly_once(self.acked, received, logs)
        verdict["conversations_not_read"] = unread

        def sec(t: float) -> int:
            return int(math.floor(t - t_kill))

        timeline: dict[int, dict[str, Any]] = {}

        def bump(t: float, key: str, n: int = 1) -> None:
            row = timeline.setdefault(sec(t), {})
            row[key] = row.get(key, 0) + n

        for t in self.ev_attempt:
            bump(t, "attempts")
        for t in self.ev_handshake:
            bump(t, "handshakes")
        for t in self.ev_hello:
            bump(t, "hellos")
        for t, _d, _n in self.ev_back:
            bump(t, "reconnected")
        for t in self.ev_drop:
            bump(t, "dropped")
        for t in self.ev_ack:
            bump(t, "acked")
        for t, kind in self.ev_refusal:
            bump(t, "refused:" + kind)
        for t, code in self.ev_error:
            bump(t, "error:" + code)
        lat: dict[int, list[float]] = {}
        for made, ms, via in self.ev_deliver:
            lat.setdefault(sec(made), []).append(round(ms, 2))
            if via == "sync":
                bump(made, "delivered_by_sync")
        for s, xs in lat.items():
            timeline.setdefault(s, {})["lat"] = xs
        back = [(round(t - t_kill, 3), round(t - d, 3), n) for t, d, n in self.ev_back]
        return {
            "clients": len(self.clients), "pairs": len(self.pairs),
            "dropped": sum(1 for c in self.clients if c.drops),
            "not_back": sum(1 for c in self.clients if c.state != "open"),
            "back": back, "sent": self.sent, "resent": self.resent, "ack_kind": self.ack_kind,
            "ack_mismatch": self.ack_mismatch, "redelivered": self.redelivered, "failed_messages": self.failed_msgs,
            "outbox_left": sum(len(c.outbox) for c in self.clients), "verdict": verdict,
            "timeline": {str(k): v for k, v in sorted(timeline.items())},
        }

    async def cmd_quit(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.stop_sending = True
        self.quitting = True
        conns = [c.ws for c in self.clients if c.ws is not None]
        for ws in conns:
            ws.close()
        if conns:
            await asyncio.wait([ws.lost for ws in conns], timeout=float(msg.get("timeout", 10.0)))
        for ws in conns:
            if ws.transport is not None and not ws.lost.done():
                ws.transport.abort()
        return {"closed": len(conns)}


async def main() -> None:
    await serve_lines(Worker, "resume worker")


if __name__ == "__main__":
    asyncio.run(main())
