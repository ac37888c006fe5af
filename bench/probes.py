"""What bench/run.py reads from our server during a measured phase.

- ``HopScrape``: ``/metrics`` read at the start and at the end of the
  measured window; the differences of the per-hop histograms give each
  hop's count, mean and (bucket-interpolated) p50/p99/p99.9 over exactly
  that window, so the hops can be set beside the load generator's
  send->deliver figures (docs/benchmarks.md, "Per-hop latency budget").
- ``Profile``: ``py-spy record`` attached to the server process for the
  measured window, writing a flame graph (SVG) per phase (``--profile DIR``).

Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import urllib.request
from typing import Any

HOPS = (
    ("parse", "frame_parse_seconds"),
    ("append", "message_append_seconds"),
    ("append: queue wait", "append_queue_seconds"),
    ("append: commit (per batch)", "append_commit_seconds"),
    ("publish (incl. deliver)", "message_publish_seconds"),
    ("deliver", "message_deliver_seconds"),
    ("ack (frame in -> ack out)", "message_ack_latency_seconds"),
    ("reactor lag (50 ms timer)", "reactor_lag_seconds"),
)

_SAMPLE = re.compile(r'^(?:supportchat_)?([a-z_]+?)(_bucket|_sum|_count)(?:\{le="([^"]+)"\})? ([0-9.eE+-]+|\+Inf)$')


def parse_histograms(text: str) -> dict[str, dict[str, Any]]:
    """{name: {"buckets": [(le, cumulative count)], "sum": s, "count": n}}
    for every histogram without labels other than ``le``."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        name, part, le, value = m.groups()
        h = out.setdefault(name, {"buckets": [], "sum": 0.0, "count": 0.0})
        if part == "_bucket" and le is not None:
            h["buckets"].append((float(le), float(value)))
        elif part == "_sum":
            h["sum"] = float(value)
        elif part == "_count":
            h["count"] = float(value)
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the
    bucket that holds the q-th observation (cumulative counts)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lower_le
            if n == lower_n:
                return le
            return lower_le + (le - lower_le) * (rank - lower_n) / (n - lower_n)
        lower_le, lower_n = le, n
    return buckets[-1][0]


def difference(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, h in after.items():
        b = before.get(name, {"buckets": [], "sum": 0.0, "count": 0.0})
        prev = dict(b["buckets"])
        out[name] = {"buckets": [(le, n - prev.get(le, 0.0)) for le, n in h["buckets"]],
                     "sum": h["sum"] - b["sum"], "count": h["count"] - b["count"]}
    return out


def summarise(window: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label, name in HOPS:
        h = window.get(name)
        if not h or h["count"] <= 0:
            continue

        def ms(q: float) -> float | None:
            v = quantile(q, h["buckets"])
            return None if v is None else round(v * 1000, 3)
        rows.append({"hop": label, "metric": name, "count": int(h["count"]),
                     "mean_ms": round(h["sum"] / h["count"] * 1000, 3),
                     "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999)})
    return rows


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback only
        body: bytes = r.read()
    return body.decode("utf-8", "replace")


class HopScrape:
    """Per-hop histograms of our server over one measured window."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.before: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        self.before = parse_histograms(await asyncio.to_thread(_get, self.url))

    async def stop(self) -> list[dict[str, Any]]:
        after = parse_histograms(await asyncio.to_thread(_get, self.url))
        return summarise(difference(self.before, after))


def py_spy() -> str | None:
    """The py-spy next to this interpreter (``pip install py-spy`` into the
    virtualenv), or one on the PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


class Profile:
    """``py-spy record`` on one process for ``seconds``: a flame graph of
    every thread (``--threads``: the reactor and the SQL pool thread are told
    apart), sampled without stopping the process (``--nonblocking``)."""

    RATE = 250

    def __init__(self, pid: int, path: str, seconds: float) -> None:
        self.pid, self.path, self.seconds = pid, path, seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = path + ".log"

    def argv(self, exe: str) -> list[str]:
        return [exe, "record", "--pid", str(self.pid), "--output", self.path, "--format", "flamegraph",
                "--rate", str(self.RATE), "--duration", str(max(1, int(self.seconds))), "--threads",
                "--nonblocking"]

    async def start(self) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(*self.argv(exe), stdout=log, stderr=log,
                                                         stdin=asyncio.subprocess.DEVNULL)
        log.close()

    async def stop(self, early: bool = False) -> dict[str, Any]:
        """Wait for the recording to end (``early``: end it now; py-spy
        writes what it has on SIGINT)."""
        assert self.proc is not None
        if early and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout=self.seconds + 60)
        except asyncio.TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        return {"flamegraph": self.path, "rc": rc, "rate_hz": self.RATE}
