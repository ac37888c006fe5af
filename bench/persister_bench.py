"""Persister throughput per SQL engine: rows/s with group-commit batching.

Three write paths are measured on SQLite, PostgreSQL and MariaDB, each in a
fresh, uniquely named database that is dropped afterwards:

* ``append``: ``SqlConversationStore.append`` on a real adbapi pool (the
  single-node path: seq assignment under ``SELECT ... FOR UPDATE``, unread
  counters, idempotency keys, ack after commit). All messages are offered
  at once; group commit packs them into transactions of at most ``batch``.
* ``persist``: ``persist_batch_txn`` (the Redis mode's flush of already
  sequenced messages into SQL, insert-ignore keyed on msg_id) in
  transactions of ``batch`` messages.
* ``stream``: the whole Redis-mode persister as a deployment runs it. A
  private ``redis-server`` (free port, no persistence) is filled with
  ``--stream-messages`` entries over ``--stream-conversations``
  conversations (the stream and the recent sets, as the gateways' APPEND
  leaves them); then ``--consumers`` persister processes (each a
  ``supportchat.redis.persister.Persister`` with its own Redis connection
  and database pool, one consumer of the group ``persisters``) are started
  together and timed until the group has acknowledged every entry (read,
  decode, SQL commit, XACK, recent-set trim). Every message must be in SQL
  exactly once and every recent set empty, or the run fails. The figure is
  compared with ``--gateway-rate`` x 3 (issue 14, target 4).

Usage (servers as on the CI machine; see --help):

    .venv/bin/python bench/persister_bench.py --messages 5000 --batches 1,64,512
    .venv/bin/python bench/persister_bench.py --paths stream --engines sqlite,postgres --consumers 1,2,4

Prints a Markdown table and writes the figures to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from supportchat.storage.database import Database, migrate_blocking  # noqa: E402
from supportchat.storage.engines import Engine, MysqlEngine, PostgresEngine, engine_from_url  # noqa: E402
from supportchat.storage.models import TEXT, AppendRequest, Message, new_id, principal_key  # noqa: E402
from supportchat.storage.sql import SqlConversationStore  # noqa: E402

PG_ADMIN = os.environ.get("SUPPORTCHAT_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("SUPPORTCHAT_TEST_MYSQL_ADMIN_URL", "mysql://root@127.0.0.1:3306/mysql")


def _admin_exec(kind: str, sql: str) -> None:
    admin = engine_from_url(PG_ADMIN if kind == "postgresql" else MYSQL_ADMIN)
    conn = admin.connect()
    try:
        if kind == "postgresql":
            conn.autocommit = True
        cur = conn.cursor()
        cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


class Scratch:
    """A fresh database of one engine, dropped on exit."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"supportchat_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Engine:
        if self.kind == "sqlite":
            self.tmp = tempfile.TemporaryDirectory()
            engine = engine_from_url(f"sqlite:///{self.tmp.name}/bench.db")
        elif self.kind == "postgresql":
            _admin_exec(self.kind, f'CREATE DATABASE "{self.name}"')
            base = engine_from_url(PG_ADMIN)
            assert isinstance(base, PostgresEngine)
            engine = base.with_database(self.name)
        else:
            _admin_exec(self.kind, f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            base2 = engine_from_url(MYSQL_ADMIN)
            assert isinstance(base2, MysqlEngine)
            engine = base2.with_database(self.name)
        migrate_blocking(engine)
        return engine

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "sqlite":
            assert self.tmp is not None
            self.tmp.cleanup()
        elif self.kind == "postgresql":
            _admin_exec(self.kind, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            _admin_exec(self.kind, f"DROP DATABASE IF EXISTS `{self.name}`")


@defer.inlineCallbacks
def bench_append(reactor: Any, engine: Engine, messages: int, batch: int, conversations: int, pool: int) -> Any:
    db = Database(engine, reactor, pool_size=pool)
    db.start()
    try:
        store = SqlConversationStore(db, batch_max=batch)
        convs = []
        for c in range(conversations):
            conv, _ = yield store.open_conversation(f"cust{c}", 1.0)
            convs.append(conv.id)
        body = "Where is my order? It was due yesterday and the tracking page says nothing. " * 2
        start = time.perf_counter()
        ds = [
            store.append(AppendRequest(
                conversation_id=convs[i % conversations], sender_id=f"cust{i % conversations}",
                sender_role="customer", kind=TEXT, body=body, ts=1000.0 + i, client_msg_id=f"k{i}",
            ))
            for i in range(messages)
        ]
        yield defer.DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        elapsed = time.perf_counter() - start
        return {"rows_per_s": messages / elapsed, "seconds": elapsed, "transactions": store.batches}
    finally:
        db.close()


@defer.inlineCallbacks
def bench_persist(reactor: Any, engine: Engine, messages: int, batch: int, conversations: int, pool: int) -> Any:
    from supportchat.storage.persist import persist_batch_txn

    db = Database(engine, reactor, pool_size=pool)
    db.start()
    try:
        store = SqlConversationStore(db)
        convs = []
        for c in range(conversations):
            conv, _ = yield store.open_conversation(f"cust{c}", 1.0)
            convs.append(conv.id)
        body = "Where is my order? It was due yesterday and the tracking page says nothing. " * 2
        seqs = dict.fromkeys(convs, 0)
        rows = []
        for i in range(messages):
            conv_id = convs[i % conversations]
            seqs[conv_id] += 1
            rows.append(Message(
                conversation_id=conv_id, msg_id=new_id("m", 1000.0 + i), seq=seqs[conv_id],
                sender_id=f"cust{i % conversations}", sender_role="customer", client_msg_id=f"k{i}",
                kind=TEXT, body=body, ts=1000.0 + i,
            ))
        start = time.perf_counter()
        transactions = 0
        for i in range(0, messages, batch):
            yield db.run_interaction("persist", persist_batch_txn, rows[i:i + batch], 86400.0)
            transactions += 1
        elapsed = time.perf_counter() - start
        return {"rows_per_s": messages / elapsed, "seconds": elapsed, "transactions": transactions}
    finally:
        db.close()


# --- the whole persister: stream -> SQL -> XACK, in separate processes -----

ALIASES = {"postgres": "postgresql", "pg": "postgresql", "mariadb": "mysql"}
PREFIX = "sc:"
GROUP = "persisters"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Resp:
    """A minimal blocking RESP2 client: the bench's own set-up and polling
    (the persisters under test use the product's client)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = self.sock.makefile("rb")

    @staticmethod
    def encode(*args: Any) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def read(self) -> Any:
        line = self.buf.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.buf.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args: Any) -> Any:
        self.sock.sendall(self.encode(*args))
        return self.read()

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        out = []
        for i in range(0, len(commands), 2000):
            part = commands[i:i + 2000]
            self.sock.sendall(b"".join(self.encode(*c) for c in part))
            out += [self.read() for _ in part]
        return out

    def close(self) -> None:
        self.buf.close()
        self.sock.close()


class BenchRedis:
    """A private redis-server on a free port (AOF everysec, as the load run's
    Redis mode), never the shared one."""

    def __enter__(self) -> "BenchRedis":
        self.tmp = tempfile.TemporaryDirectory()
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.tmp.name,
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
             "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client = Resp(self.port)
                self.client.call("PING")
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __exit__(self, *exc: Any) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.tmp.cleanup()


def _engine_url(engine: Engine) -> str:
    if isinstance(engine, (PostgresEngine, MysqlEngine)):
        return engine.url
    return engine.describe()


def _seed(engine: Engine, conversations: int) -> list[tuple[str, str, str]]:
    """Conversations with a customer and an agent: (id, customer, agent)."""
    convs = [(f"c-bench-{n:05d}", principal_key("customer", f"cust{n}"), f"agent{n}") for n in range(conversations)]
    conn = engine.connect()
    try:
        cur = conn.cursor()
        cur.executemany(engine.convert(
            "INSERT INTO conversations (id, customer_id, status, created_at, last_seq, last_msg_id, last_ts,"
            " closed_at) VALUES (?, ?, 'open', 1.0, 0, NULL, NULL, NULL)"), [(c, cust) for c, cust, _ in convs])
        cur.executemany(engine.convert(
            "INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
            " VALUES (?, ?, ?, 1.0, 0, 0)"),
            [(c, cust, "customer") for c, cust, _ in convs] + [(c, agent, "agent") for c, _, agent in convs])
        conn.commit()
    finally:
        conn.close()
    return convs


def _fill(redis: Resp, convs: list[tuple[str, str, str]], messages: int) -> None:
    """The stream and the recent sets as the gateways' APPEND leaves them:
    one entry per message (field ``m``, the message JSON), seqs 1, 2, ...
    per conversation; two messages of three from the customer."""
    from supportchat.redis.codec import encode_message

    body = "Where is my order? It was due yesterday and the tracking page says nothing. " * 2
    seqs = [0] * len(convs)
    commands: list[tuple[Any, ...]] = []
    for i in range(messages):
        n = i % len(convs)
        conv, cust, agent = convs[n]
        seqs[n] += 1
        agent_turn = i // len(convs) % 3 == 2
        ts = 1000.0 + i / 1000
        text = encode_message(Message(
            conversation_id=conv, msg_id=new_id("m", ts), seq=seqs[n], sender_id=agent if agent_turn else cust,
            sender_role="agent" if agent_turn else "customer", client_msg_id=f"k{i}", kind=TEXT, body=body, ts=ts,
        ))
        commands.append(("XADD", f"{PREFIX}stream", "*", "m", text, "c", conv,
                         "r", "agent" if agent_turn else "customer", "k", TEXT))
        commands.append(("ZADD", f"{PREFIX}recent:{conv}", seqs[n], text))
    redis.pipeline(commands)
    redis.call("XGROUP", "CREATE", f"{PREFIX}stream", GROUP, "0", "MKSTREAM")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_seconds(kind: str) -> float:
    """CPU of every process of the SQL server (0 for SQLite): the shared
    server's, so other clients' work counts too."""
    names = {"postgresql": ("postgres",), "mysql": ("mariadbd", "mysqld")}.get(kind, ())
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() not in names:
                    continue
            total += _cpu_seconds(int(pid))
        except OSError:
            continue
    return total


def _group_done(redis: Resp, last_id: str) -> bool:
    for info in redis.call("XINFO", "GROUPS", f"{PREFIX}stream") or []:
        fields = dict(zip(info[::2], info[1::2]))
        if fields.get("name") == GROUP:
            return bool(fields.get("last-delivered-id") == last_id and int(fields.get("pending") or 0) == 0)
    return False


def _count_rows(engine: Engine) -> tuple[int, int]:
    conn = engine.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT msg_id) FROM messages")
        row = cur.fetchone()
        conn.commit()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def bench_stream(kind: str, engine: Engine, messages: int, conversations: int, consumers: int, batch: int,
                 pool: int, profile: str | None) -> dict[str, Any]:
    with BenchRedis() as redis:
        convs = _seed(engine, conversations)
        _fill(redis.client, convs, messages)
        last = redis.client.call("XREVRANGE", f"{PREFIX}stream", "+", "-", "COUNT", 1)[0][0]
        workers = []
        for c in range(consumers):
            spec = {"db": _engine_url(engine), "redis": redis.url, "consumer": f"p{c}", "batch": batch,
                    "pool": pool, "prefix": PREFIX}
            workers.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))
        try:
            for w in workers:
                assert w.stdout is not None
                while (line := w.stdout.readline()) and line.strip() != "ready":
                    pass
                if not line:
                    raise RuntimeError("a persister process did not start")
            spy = None
            if profile:
                spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                                        "--pid", str(workers[0].pid), "--rate", "250", "--threads", "-o", profile],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
            cpu0 = [_cpu_seconds(w.pid) for w in workers] + [_cpu_seconds(redis.proc.pid), _server_cpu_seconds(kind)]
            start = time.perf_counter()
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("go\n")
                w.stdin.flush()
            deadline = start + 600
            while not _group_done(redis.client, last):
                if time.perf_counter() > deadline or any(w.poll() is not None for w in workers):
                    raise RuntimeError("the persisters did not finish")
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            cpu1 = [_cpu_seconds(w.pid) for w in workers] + [_cpu_seconds(redis.proc.pid), _server_cpu_seconds(kind)]
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            stats = []
            for w in workers:
                assert w.stdin is not None and w.stdout is not None
                w.stdin.write("stop\n")
                w.stdin.flush()
                while (line := w.stdout.readline()) and not line.startswith("{"):
                    pass
                stats.append(json.loads(line))
                w.wait(timeout=30)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        rows, distinct = _count_rows(engine)
        left = sum(redis.client.pipeline([("ZCARD", f"{PREFIX}recent:{c}") for c, _, _ in convs]))
        flushed = sum(s["flushed"] for s in stats)
        if not (rows == distinct == flushed == messages and left == 0):
            raise RuntimeError(f"not stored exactly once: {rows} rows, {distinct} distinct, {flushed} flushed,"
                               f" {messages} sent, {left} left in recent sets")
    used = [b - a for a, b in zip(cpu0, cpu1)]
    return {"rows_per_s": messages / elapsed, "seconds": elapsed, "transactions": sum(s["batches"] for s in stats),
            "consumers": consumers, "persister_cpu_s": sum(used[:-2]), "redis_cpu_s": used[-2],
            "sql_server_cpu_s": used[-1], "cpu_ms_per_1000_rows": sum(used[:-2]) * 1e6 / messages}


def worker_main(spec: dict[str, Any]) -> None:
    """One persister process: connects, says ``ready``, starts on ``go``,
    stops on ``stop`` and prints its counters as JSON."""
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import maybeDeferred
    from twisted.protocols.basic import LineReceiver

    from supportchat.metrics import Metrics
    from supportchat.redis.connection import RedisClient
    from supportchat.redis.persister import Persister

    engine = engine_from_url(spec["db"])
    db = Database(engine, reactor, pool_size=spec["pool"])
    db.start()
    redis = RedisClient(reactor, spec["redis"], name="bench-persister", reply_timeout=30.0)
    persister = Persister(reactor, redis, db, Metrics(), spec["consumer"], prefix=spec["prefix"],
                          batch=spec["batch"])

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"go":
                persister.startService()
            elif line.strip() == b"stop":
                def done(_: Any) -> None:
                    counters = {"flushed": persister.flushed, "batches": persister.batches}
                    os.write(1, json.dumps(counters).encode() + b"\n")  # before the reactor (and its writes) stop
                    db.close()
                    reactor.stop()
                maybeDeferred(persister.stopService).addBoth(done)

    control = Control()
    stdio.StandardIO(control, reactor=reactor)
    redis.service.startService()
    redis.connected_once.addCallback(lambda _: control.sendLine(b"ready"))
    reactor.run()


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    results: list[dict[str, Any]] = []
    for kind in [ALIASES.get(e, e) for e in args.engines.split(",")]:
        for path in args.paths.split(","):
            if path == "stream":
                for consumers in [int(c) for c in args.consumers.split(",")]:
                    for batch in [int(b) for b in args.persister_batch.split(",")]:
                        profile = args.profile if args.profile and len(results) == 0 else None
                        with Scratch(kind) as engine:
                            r = bench_stream(kind, engine, args.stream_messages, args.stream_conversations,
                                             consumers, batch, args.pool, profile)
                        r.update(engine=kind, path=path, batch=batch, messages=args.stream_messages)
                        results.append(r)
                        print(f"{kind:10} stream   consumers={consumers} batch={batch:<5} {args.stream_messages:6} msgs"
                              f" {r['rows_per_s']:9.0f} rows/s ({r['seconds']:.2f}s, persister CPU"
                              f" {r['persister_cpu_s']:.1f}s, Redis CPU {r['redis_cpu_s']:.1f}s, SQL server CPU"
                              f" {r['sql_server_cpu_s']:.1f}s)", flush=True)
                continue
            for batch in [int(b) for b in args.batches.split(",")]:
                n = min(args.messages, args.messages_unbatched) if batch == 1 else args.messages
                with Scratch(kind) as engine:
                    fn = bench_append if path == "append" else bench_persist
                    r = yield fn(reactor, engine, n, batch, args.conversations, args.pool)
                r.update(engine=kind, path=path, batch=batch, messages=n)
                results.append(r)
                print(f"{kind:10} {path:8} batch={batch:<4} {n:6} msgs {r['rows_per_s']:9.0f} rows/s "
                      f"({r['transactions']} transactions, {r['seconds']:.2f}s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="sqlite,postgresql,mysql")
    parser.add_argument("--paths", default="append,persist")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--messages-unbatched", type=int, default=1000, help="messages for batch=1 runs")
    parser.add_argument("--batches", default="1,64,512")
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--consumers", default="1,2", help="stream path: persister processes sharing the group")
    parser.add_argument("--persister-batch", default="2000", help="stream path: [redis] persister_batch values")
    parser.add_argument("--stream-messages", type=int, default=60000)
    parser.add_argument("--stream-conversations", type=int, default=500)
    parser.add_argument("--gateway-rate", type=float, default=5000.0,
                        help="one gateway's saturation rate, msg/s (target: persister >= 3x)")
    parser.add_argument("--profile", help="stream path: py-spy flame graph (SVG) of the first run's first persister")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return

    def go(reactor: Any) -> Any:
        return run(reactor, args).addCallback(report, args)

    task.react(go)


def report(out: list[Any], args: argparse.Namespace) -> None:
    print("command: .venv/bin/python bench/persister_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    rows = ["| engine | path | consumers | batch | messages | rows/s | transactions | persister CPU ms / 1,000 rows |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out:
        cpu = f"{r['cpu_ms_per_1000_rows']:.0f}" if "cpu_ms_per_1000_rows" in r else ""
        rows.append(f"| {r['engine']} | {r['path']} | {r.get('consumers', '')} | {r['batch']} | {r['messages']} |"
                    f" {r['rows_per_s']:.0f} | {r['transactions']} | {cpu} |")
    print("\n".join(rows))
    target = 3 * args.gateway_rate
    for r in out:
        if r["path"] == "stream":
            verdict = "meets" if r["rows_per_s"] >= target else f"misses (x{r['rows_per_s'] / target:.2f})"
            print(f"{r['engine']} with {r['consumers']} persister(s), batch {r['batch']}: {r['rows_per_s']:.0f} rows/s"
                  f" {verdict} 3 x one gateway ({target:.0f} msg/s)")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(os.path.dirname(__file__), "results", f"persister-{stamp}.json"), "w") as f:
        json.dump({"args": vars(args), "results": out}, f, indent=2)

if __name__ == "__main__":
    main()
