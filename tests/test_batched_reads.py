"""Reads asked for together go together (supportchat/storage/batched.py),
and the session states of every hello are read that way."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial import unittest

from supportchat.storage.batched import BatchedReads
from supportchat.storage.models import customer_key
from supportchat.storage.sql import SqlConversationStore
from tests.test_storage_contract import threadless_sqlite


class BatchedReadsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[list[str], Deferred[dict[str, int]]]] = []

        def run(keys: list[str]) -> "Deferred[dict[str, int]]":
            d: Deferred[dict[str, int]] = Deferred()
            self.calls.append((keys, d))
            return d

        self.reads: BatchedReads[str, int] = BatchedReads(run, batch_max=3)

    def test_a_lone_read_goes_at_once_and_a_burst_waits_for_it(self) -> None:
        """The first read is sent at once; the reads asked for meanwhile
        (a repeated key once) go as the next batches of at most batch_max,
        each answered with its own value."""
        first = self.reads.get("a")
        self.assertEqual([k for k, _ in self.calls], [["a"]])
        later = [self.reads.get(k) for k in ("b", "c", "b", "d", "e")]
        self.assertEqual(len(self.calls), 1)
        self.calls[0][1].callback({"a": 1})
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual([k for k, _ in self.calls], [["a"], ["b", "c", "d"]])
        self.calls[1][1].callback({"b": 2, "c": 3, "d": 4})
        self.assertEqual(self.calls[2][0], ["e"])
        self.calls[2][1].callback({"e": 5})
        self.assertEqual([self.successResultOf(d) for d in later], [2, 3, 2, 4, 5])
        self.assertEqual(self.reads.batches, 3)

    def test_a_failed_batch_fails_its_readers_only(self) -> None:
        """A batch that fails errbacks each of its readers; reads queued
        behind it go next and succeed."""
        first = self.reads.get("a")
        second = self.reads.get("b")
        self.calls[0][1].errback(RuntimeError("database down"))
        self.failureResultOf(first, RuntimeError)
        self.calls[1][1].callback({"b": 7})
        self.assertEqual(self.successResultOf(second), 7)


class SessionStatesTests(unittest.TestCase):
    @inlineCallbacks
    def test_hellos_together_read_every_users_states_in_one_transaction(self) -> Any:
        """Session states of users asked for together come from one
        transaction after the first, each user getting exactly their own
        open conversations (none for a user without any)."""
        db = threadless_sqlite(self)
        store = SqlConversationStore(db)
        convs = {}
        for user in ("u1", "u2", "u3"):
            conv, _ = yield store.open_conversation(customer_key(user), 1.0)
            convs[user] = conv.id
        yield store.add_participant(convs["u1"], "ag", "agent", 2.0)
        yield store.add_participant(convs["u2"], "ag", "agent", 2.0)
        # Transactions answer when released (as a pool thread would, later).
        inline, held = db.run_interaction, []

        def later(desc: str, fn: Any, *args: Any) -> "Deferred[Any]":
            d: Deferred[Any] = Deferred()
            held.append((desc, args, inline(desc, fn, *args), d))
            return d

        db.run_interaction = later  # type: ignore[method-assign]
        users = [customer_key("u1"), customer_key("u2"), customer_key("u3"), "ag", "nobody"]
        reads = gatherResults([store.get_states(u) for u in users])
        while any(not d.called for *_, d in held):
            for _, _, result, d in held:
                if not d.called:
                    result.chainDeferred(d)
        states = yield reads
        self.assertEqual([(desc, args[0]) for desc, args, _, _ in held],
                         [("get_states", users[:1]), ("get_states", users[1:])])
        self.assertEqual([[s.conversation_id for s in ss] for ss in states],
                         [[convs["u1"]], [convs["u2"]], [convs["u3"]], sorted([convs["u1"], convs["u2"]]), []])
