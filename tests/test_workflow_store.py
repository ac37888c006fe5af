"""The WorkflowStore contract, run on the in-memory twin, SQLite,
PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from supportchat.workflow.memory import MemoryWorkflowStore
from supportchat.workflow.models import Agent, WorkflowError
from supportchat.workflow.store import SqlWorkflowStore
from tests.dbs import StoreContract, threadless_db

TABLES = ("agents", "teams", "refresh_tokens", "work_items", "work_notes")


class WorkflowStoreContract(StoreContract):
    def agent(self, agent_id: str, team: str = "", capacity: int = 2, online: bool = True) -> None:
        self.ok(self.store.create_agent(Agent(agent_id, agent_id, agent_id, "agent", team, capacity, created_at=1.0)))
        if online:
            self.ok(self.store.set_status(agent_id, "online"))

    def test_least_busy_within_team_and_capacity(self) -> None:
        """Oldest first to the least busy online agent of the team; never above capacity; others stay queued."""
        self.agent("a", capacity=2)
        self.agent("b", capacity=1)
        self.agent("s", team="sales", capacity=5, online=False)
        for i in range(5):
            self.ok(self.store.enqueue(f"c{i}", f"u{i}", "", 10.0 + i))
        got = self.ok(self.store.assign_next(100.0, 50))
        self.assertEqual([(x.conversation_id, x.agent_id) for x in got], [("c0", "a"), ("c1", "b"), ("c2", "a")])
        self.assertEqual(self.ok(self.store.assign_next(101.0, 50)), [])
        self.assertEqual([i.conversation_id for i in self.ok(self.store.list_items("queued", None, None, 10))],
                         ["c3", "c4"])
        waited = self.ok(self.store.list_items(None, None, None, 10, queued_before=13.0))  # waiting since 13 or before
        self.assertEqual([i.conversation_id for i in waited], ["c3"])
        self.assertEqual(self.ok(self.store.get_agent("a")).load, 2)

    def test_close_frees_capacity_and_take_conflicts(self) -> None:
        """Close frees the slot (the next drain assigns); taking someone else's conversation is refused."""
        self.agent("a", capacity=1)
        self.agent("b", capacity=0)
        self.ok(self.store.enqueue("c1", "u1", "", 1.0))
        self.ok(self.store.enqueue("c2", "u2", "", 2.0))
        self.ok(self.store.assign_next(5.0, 10))
        self.failureResultOf(self.store.take("c1", "u1", "b", 6.0), WorkflowError)  # type: ignore[attr-defined]
        self.assertIsNone(self.ok(self.store.take("c1", "u1", "a", 6.0)))
        self.assertEqual(self.ok(self.store.close("c1", 7.0)).agent_id, "a")
        self.assertIsNone(self.ok(self.store.close("c1", 7.0)))
        [again] = self.ok(self.store.assign_next(8.0, 10))
        self.assertEqual((again.conversation_id, again.agent_id), ("c2", "a"))
        self.assertTrue(self.ok(self.store.rate("c1", 5, "great", 9.0)))
        self.assertEqual(self.ok(self.store.csat_report(0.0))["by_agent"]["a"]["count"], 1)

    def test_transfer_and_disable(self) -> None:
        """Transfer moves the load and keeps the note; disabling requeues and revokes refresh tokens."""
        self.agent("a")
        self.agent("b")
        self.ok(self.store.enqueue("c1", "u1", "", 1.0))
        self.ok(self.store.take("c1", "u1", "a", 2.0))
        before, after = self.ok(self.store.transfer("c1", "b", None, "a", "vip", 3.0))
        self.assertEqual((before.agent_id, after.agent_id), ("a", "b"))
        self.assertEqual((self.ok(self.store.get_agent("a")).load, self.ok(self.store.get_agent("b")).load), (0, 1))
        self.assertEqual([n.body for n in self.ok(self.store.notes("c1"))], ["vip"])
        self.ok(self.store.save_refresh("h", "b", 100.0))
        agent, requeued = self.ok(self.store.update_agent("b", {"disabled": True}, 4.0))
        self.assertEqual((agent.disabled, agent.status, agent.load, requeued), (True, "offline", 0, ["c1"]))
        self.assertIsNone(self.ok(self.store.use_refresh("h", 5.0)))

    def test_absent_agents_conversations_go_back_first_in_line(self) -> None:
        """An agent recorded absent for absent_for seconds loses their conversations to the
        queue (first queue time kept, load 0); not earlier, not an agent not listed, and the
        first absence record wins until it is cleared."""
        self.agent("a", capacity=2)
        self.agent("b", capacity=1)
        for i, conv in enumerate(("c1", "c2", "c3")):
            self.ok(self.store.enqueue(conv, f"u{i}", "", 10.0 + i))
        self.ok(self.store.enqueue("c4", "u4", "", 50.0))
        self.ok(self.store.assign_next(20.0, 3))  # c1, c3 -> a; c2 -> b
        self.ok(self.store.mark_absent("a", 100.0))
        self.ok(self.store.mark_absent("a", 200.0))  # still absent since 100
        self.ok(self.store.mark_absent("b", 100.0))
        watched = {agent.id: since for agent, since in self.ok(self.store.watched_agents())}
        self.assertEqual(watched, {"a": 100.0, "b": 100.0})
        self.assertEqual(self.ok(self.store.requeue_absent(399.0, 300.0, ["a", "b"])), [])
        moved = self.ok(self.store.requeue_absent(400.0, 300.0, ["a"]))
        self.assertEqual(moved, [("c1", "a"), ("c3", "a")])
        self.assertEqual(self.ok(self.store.get_agent("a")).load, 0)
        queued = self.ok(self.store.list_items("queued", None, None, 10))
        self.assertEqual([(i.conversation_id, i.queued_at) for i in queued], [("c1", 10.0), ("c3", 12.0), ("c4", 50.0)])
        self.assertEqual(self.ok(self.store.get_item("c2")).agent_id, "b")  # b was not listed
        self.ok(self.store.mark_absent("b", 0))  # b is back
        self.assertEqual(self.ok(self.store.requeue_absent(500.0, 300.0, ["b"])), [])

    def test_serves_customer_is_the_team_inbox_or_own_assignment(self) -> None:
        """An agent serves a customer with a conversation in the agent's team or assigned
        to the agent (after a transfer across teams too); not another team's customers."""
        self.agent("a", team="sales")
        self.agent("b", team="billing")
        self.ok(self.store.create_team("billing", "Billing", 1.0))
        self.ok(self.store.enqueue("c1", "u1", "sales", 1.0))
        self.assertEqual([self.ok(self.store.serves_customer("u1", team, agent)) for team, agent in
                          (("sales", "a"), ("billing", "b"), ("", "x"))], [True, False, False])
        self.assertFalse(self.ok(self.store.serves_customer("nobody", "sales", "a")))
        self.ok(self.store.take("c1", "u1", "a", 2.0))
        self.ok(self.store.transfer("c1", "b", None, "a", None, 3.0))
        self.assertTrue(self.ok(self.store.serves_customer("u1", "billing", "b")))

    def test_bot_hold_then_handoff_enters_the_queue_once(self) -> None:
        """A conversation held for the bot is not assigned; the handoff queues it (once) and it is assigned."""
        self.agent("a")
        self.ok(self.store.enqueue("c1", "u1", "", 1.0, state="bot"))
        self.assertEqual(self.ok(self.store.assign_next(2.0, 10)), [])
        self.assertEqual(self.ok(self.store.list_items("queued", None, None, 10)), [])
        item = self.ok(self.store.handoff("c1", 3.0))
        self.assertEqual((item.state, item.queued_at), ("queued", 3.0))
        self.assertIsNone(self.ok(self.store.handoff("c1", 4.0)))  # seen twice: no change
        self.assertIsNone(self.ok(self.store.handoff("unknown", 4.0)))
        [got] = self.ok(self.store.assign_next(5.0, 10))
        self.assertEqual((got.conversation_id, got.agent_id), ("c1", "a"))
        self.assertIsNone(self.ok(self.store.handoff("c1", 6.0)))


class MemoryWorkflowStoreTests(WorkflowStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryWorkflowStore()


class _Sql(WorkflowStoreContract):
    kind = "sqlite"

    def make_store(self) -> Any:
        db = threadless_db(self, self.kind)
        for table in TABLES:
            self.successResultOf(db.run_interaction("clean", lambda cur, t=table: cur.execute(f"DELETE FROM {t}")))
        return SqlWorkflowStore(db)


class SqliteWorkflowStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "sqlite"


class PostgresWorkflowStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "postgresql"


class MariadbWorkflowStoreTests(_Sql, unittest.SynchronousTestCase):
    kind = "mysql"
