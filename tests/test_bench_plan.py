"""The load benchmark's arithmetic (bench/run.py): which loopback source
addresses each load generator binds to, CPU per role and CPU per 1,000
delivered messages. The benchmark itself is not part of the suite; these
pure functions decide what it reports, so they are checked here."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run_under_test", os.path.join(BENCH, "run.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = before  # run.py puts bench/ on the path for its own imports
    return module


run = _load_run()


class SourceAddressesTests(SynchronousTestCase):
    def test_small_runs_use_the_kernel_choice(self) -> None:
        """Up to one address pair's worth of connections (auto), or when
        asked (off), no process binds a source address."""
        self.assertEqual(run.plan_sources([5_000, 5_000]), [[], []])
        self.assertEqual(run.plan_sources([20_000, 20_000], "off"), [[], []])

    def test_each_process_gets_its_own_addresses(self) -> None:
        """40,000 connections over four processes: one address each, from
        127.0.0.2 up, none shared (each pair of addresses has its own ports)."""
        self.assertEqual(run.plan_sources([10_002, 10_002, 10_002, 10_002]),
                         [["127.0.0.2"], ["127.0.0.3"], ["127.0.0.4"], ["127.0.0.5"]])

    def test_a_process_over_the_port_budget_gets_several(self) -> None:
        """A process holding more than one address's ports gets enough
        addresses to round-robin over; "on" binds even a small run."""
        self.assertEqual(run.plan_sources([30_000, 100], per_address=25_000),
                         [["127.0.0.2", "127.0.0.3"], ["127.0.0.4"]])
        self.assertEqual(run.plan_sources([10, 10], "on"), [["127.0.0.2"], ["127.0.0.3"]])

    def test_running_out_of_loopback_addresses_is_an_error(self) -> None:
        """More addresses than 127.0.0.2-254 is refused, not wrapped around."""
        with self.assertRaises(ValueError):
            run.plan_sources([1_000_000] * 11, per_address=1_000)


class CpuTests(SynchronousTestCase):
    def test_cpu_per_thousand_messages(self) -> None:
        """150 % of a core delivering 3,000 msg/s is 0.5 CPU-seconds per
        1,000 messages; nothing delivered gives no figure."""
        self.assertEqual(run.cpu_per_kmsg(150.0, 3000.0), 0.5)
        self.assertIsNone(run.cpu_per_kmsg(150.0, 0.0))
        self.assertIsNone(run.cpu_per_kmsg(None, 100.0))

    def test_role_cpu(self) -> None:
        """Per-role shares over the window; each gateway process listed;
        a process that appeared meanwhile counts from zero, one that
        vanished counts nothing; the total sums the roles."""
        roles = {"gateways": [10, 11], "persister": [20], "redis-server": [30]}
        before = {10: 5.0, 11: 1.0, 30: 2.0}  # 20 started during the window
        after = {10: 7.0, 11: 2.0, 20: 0.5, 30: 2.5}
        out = run.role_cpu(roles, before, after, 10.0)
        self.assertEqual(out, {"gateways": 30.0, "gateway_processes": [20.0, 10.0], "persister": 5.0,
                               "redis-server": 5.0, "total": 40.0})
        gone = run.role_cpu({"gateways": [10, 11]}, before, {10: 6.0}, 10.0)
        self.assertEqual(gone["gateway_processes"], [10.0, 0.0])
