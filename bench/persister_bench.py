"""Persister throughput per SQL engine: rows/s with group-commit batching.

Two write paths are measured on SQLite, PostgreSQL and MariaDB, each in a
fresh, uniquely named database that is dropped afterwards:

* ``append``: ``SqlConversationStore.append`` on a real adbapi pool (the
  single-node path: seq assignment under ``SELECT ... FOR UPDATE``, unread
  counters, idempotency keys, ack after commit). All messages are offered
  at once; group commit packs them into transactions of at most ``batch``.
* ``persist``: ``persist_batch_txn`` (the Redis mode's flush of already
  sequenced messages into SQL, insert-ignore keyed on msg_id) in
  transactions of ``batch`` messages.

Usage (servers as on the CI machine; see --help):

    .venv/bin/python bench/persister_bench.py --messages 5000 --batches 1,64,512

Prints a Markdown table and writes the figures to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from supportchat.storage.database import Database, migrate_blocking  # noqa: E402
from supportchat.storage.engines import Engine, MysqlEngine, PostgresEngine, engine_from_url  # noqa: E402
from supportchat.storage.models import TEXT, AppendRequest, Message, new_id  # noqa: E402
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


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    results = []
    for kind in args.engines.split(","):
        for path in args.paths.split(","):
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
    args = parser.parse_args()

    def go(reactor: Any) -> Any:
        return run(reactor, args).addCallback(report, args)

    task.react(go)


def report(out: list[Any], args: argparse.Namespace) -> None:
    rows = ["| engine | path | batch | messages | rows/s | transactions |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in out:
        rows.append(f"| {r['engine']} | {r['path']} | {r['batch']} | {r['messages']} | {r['rows_per_s']:.0f} | {r['transactions']} |")
    print("\n".join(rows))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(os.path.dirname(__file__), "results", f"persister-{stamp}.json"), "w") as f:
        json.dump({"args": vars(args), "results": out}, f, indent=2)

if __name__ == "__main__":
    main()
