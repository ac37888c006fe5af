"""Trimming the Redis message stream (real Redis, a private server): the
persisters' group is always waited for; another group (the bots) only for
``[redis] stream_keep_for_others`` seconds of stream time, so stopped bot
nodes cannot make the stream grow without end."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.redis.persister import GROUP, trim_stream
from tests.redis_support import REDIS_SKIP

STREAM = "trimtest:stream"


class TrimTests(unittest.TestCase):
    skip = REDIS_SKIP

    @inlineCallbacks
    def fill(self) -> Any:
        """Ten entries one second apart (stream time 1..10 s); both groups
        exist from the start; the persisters have read and acknowledged up to ``upto``."""
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("DEL", STREAM)
        self.addCleanup(server.cli, "DEL", STREAM)
        self.redis = yield connected_client(self, server.url)
        for i in range(1, 11):
            yield self.redis.execute("XADD", STREAM, f"{i * 1000}-0", "n", str(i))
        yield self.redis.execute("XGROUP", "CREATE", STREAM, GROUP, "0")
        yield self.redis.execute("XGROUP", "CREATE", STREAM, "bots", "0")

    @inlineCallbacks
    def persisted(self, count: int) -> Any:
        rows = yield self.redis.execute("XREADGROUP", "GROUP", GROUP, "p1", "COUNT", count, "STREAMS", STREAM, ">")
        ids = [entry[0] for entry in rows[0][1]]
        yield self.redis.execute("XACK", STREAM, GROUP, *ids)

    @inlineCallbacks
    def remaining(self) -> Any:
        rows = yield self.redis.execute("XRANGE", STREAM, "-", "+")
        return [int(str(r[0]).split("-")[0]) // 1000 for r in rows]

    @inlineCallbacks
    def test_a_stopped_bot_group_is_waited_for_only_so_long(self) -> Any:
        """Everything persisted, the bots never read: entries older than the newest minus
        keep_for_others (here 3.5 s) go, the newer stay for the bots; bots is reported behind."""
        yield self.fill()
        yield self.persisted(10)
        behind = yield trim_stream(self.redis, STREAM, keep_for_others=3.5)
        self.assertEqual(behind, {"bots"})
        self.assertEqual((yield self.remaining()), [7, 8, 9, 10])

    @inlineCallbacks
    def test_the_persisters_are_always_waited_for(self) -> Any:
        """Persisters at entry 3 and the bots far behind: nothing the persisters have not
        stored is trimmed, however old; with 0 the bots are waited for too."""
        yield self.fill()
        yield self.persisted(3)
        yield trim_stream(self.redis, STREAM, keep_for_others=0)
        self.assertEqual((yield self.remaining()), list(range(1, 11)))  # the bots still need entry 1
        behind = yield trim_stream(self.redis, STREAM, keep_for_others=1.0)
        self.assertEqual(behind, {"bots"})
        self.assertEqual((yield self.remaining()), list(range(3, 11)))  # kept from the persisters' last read, 3

    @inlineCallbacks
    def test_a_bot_group_that_keeps_up_is_never_cut_short(self) -> Any:
        """Bots that have read and acknowledged up to entry 8: trimming waits for them, and
        nobody is reported behind."""
        yield self.fill()
        yield self.persisted(10)
        rows = yield self.redis.execute("XREADGROUP", "GROUP", "bots", "b1", "COUNT", 8, "STREAMS", STREAM, ">")
        yield self.redis.execute("XACK", STREAM, "bots", *[e[0] for e in rows[0][1]])
        behind = yield trim_stream(self.redis, STREAM, keep_for_others=3.5)
        self.assertEqual(behind, set())
        self.assertEqual((yield self.remaining()), [8, 9, 10])
