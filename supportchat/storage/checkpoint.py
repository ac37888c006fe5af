"""SQLite WAL checkpoints off the commit path.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint*
copies them back into the database file and fsyncs it. By default SQLite
runs one inside whichever commit pushes the WAL past 1,000 pages, so every
few hundred messages one append waits for a copy of ~4 MB and an extra
fsync: a latency spike that the group commit then passes on to every
message queued behind it (docs/benchmarks.md, issue 13).

With ``[database] sqlite_checkpoint_interval`` > 0 (the default) the
writer connection turns automatic checkpoints off
(``PRAGMA wal_autocheckpoint=0``, see :class:`SqliteEngine`) and this
service runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection, in
its own thread, every interval. A PASSIVE checkpoint never takes the
writer's lock: commits go on while it copies (SQLite copies only frames
that no reader still needs and fsyncs the database file without holding up
the WAL). Durability is unchanged: a commit is durable once its WAL frames
are synced (``synchronous=FULL``); the checkpoint only moves them.

Under steady load the writer appends during every checkpoint, so the WAL
would never be wholly copied and never start over from its beginning: it
would grow without bound. So when a PASSIVE checkpoint found more than
``restart_pages`` in the WAL, a RESTART checkpoint follows at once. It
holds new commits back while it runs, but only for the frames appended
since the PASSIVE one (a few milliseconds' worth) and one fsync, where an
automatic checkpoint holds one commit for the whole copy. The writer's
``journal_size_limit`` then truncates the file when it starts over.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

RESTART_PAGES = 4_000  # 16 MB of WAL with 4 KiB pages


class WalCheckpointer(Service):
    """Every ``interval`` seconds on ``reactor``, a checkpoint on a
    connection of its own in a thread of its own; ``observe(seconds,
    pages)`` is told how long each took and how many WAL pages it found.
    A tick while the previous checkpoint still runs is skipped."""

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], sqlite3.Connection],
        interval: float,
        observe: Callable[[float, int], None] = lambda seconds, pages: None,
        restart_pages: int = RESTART_PAGES,
    ) -> None:
        self.reactor = reactor
        self.connect = connect
        self.interval = interval
        self.observe = observe
        self.restart_pages = restart_pages
        self.checkpoints = 0
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPool | None = None
        self._loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite-checkpoint")
        self._pool.start()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("WAL checkpoint timer stopped", f))

    def tick(self) -> "Deferred[Any] | None":
        """Start one checkpoint unless one is running; failures are logged
        (the next tick tries again)."""
        if self._running is not None or self._pool is None:
            return None
        started = self.reactor.seconds()
        d = deferToThreadPool(self.reactor, self._pool, self._checkpoint_in_thread)
        self._running = d

        def done(pages: int) -> None:
            self.checkpoints += 1
            self.observe(self.reactor.seconds() - started, pages)

        def failed(reason: Any) -> None:
            log.failure("WAL checkpoint failed; the next one is due in {interval} s", reason,
                        interval=self.interval)

        def finished(_: Any) -> None:
            self._running = None

        d.addCallbacks(done, failed).addBoth(finished)
        return d

    def _checkpoint_in_thread(self) -> int:
        """Runs in the checkpoint thread. Returns the WAL's size in pages
        as the PASSIVE checkpoint found it (0 when empty)."""
        if self._conn is None:
            self._conn = self.connect()
        pages = self._run("PASSIVE")
        if pages >= self.restart_pages:
            self._run("RESTART")
        return pages

    def _run(self, mode: str) -> int:
        assert self._conn is not None
        row = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        # (busy, pages in the WAL, pages checkpointed); -1s when not in WAL mode.
        return max(0, int(row[1])) if row else 0

    def _close_in_thread(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._running is not None:
            yield self._running
        pool, self._pool = self._pool, None
        if pool is not None:
            yield deferToThreadPool(self.reactor, pool, self._close_in_thread)
            pool.stop()
