"""Diagnostic hook for our server's garbage collector (not used by default).

Loaded into the server with

    .venv/bin/python bench/run.py --targets ours \
        --server-env PYTHONPATH=bench/gcdiag:.

it changes nothing but logs (to the server's stderr, i.e. its log) every
collection that takes over 50 ms and every generation-2 collection, plus the
running totals every second; bench/run.py turns these into the share of each
phase's wall time spent in the collector. With
``--server-env GCDIAG_THRESHOLD=700,10,1000000`` it also calls
``gc.set_threshold`` with those values, which in practice switches off
automatic full collections: an experiment, not a configuration.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

_started = [0.0]
_totals = [0.0, 0.0, 0.0]
_last = [time.time()]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    gen = int(info["generation"])
    _totals[gen] += took
    now = time.time()
    if gen == 2 or took > 0.05:
        sys.stderr.write(f"GCDIAG gen{gen} {1000 * took:.1f} ms at {now:.3f}\n")
    if now - _last[0] >= 1.0:
        _last[0] = now
        sys.stderr.write(f"GCTOTAL {now:.3f} gen0 {_totals[0]:.3f} gen1 {_totals[1]:.3f} gen2 {_totals[2]:.3f}\n")


gc.callbacks.append(_callback)
if os.environ.get("GCDIAG_THRESHOLD"):
    gc.set_threshold(*(int(x) for x in os.environ["GCDIAG_THRESHOLD"].split(",")))
