"""What bench/run.py and bench/storm.py share: process helpers from /proc,
a free loopback port, percentiles, and the driver of a load-generator
process (bench/loadgen.py or bench/resume.py) that answers one JSON line
per command."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 60.0
CALL_TIMEOUT = 300.0


def say(*args: Any) -> None:
    print(*args, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def pct(samples: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank), rounded to 0.01."""
    if not samples:
        return None
    s = sorted(samples)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return round(s[k], 2)


class LineProcess:
    """A load-generator process (``script`` in bench/, started with ``cfg``
    as its argument) driven by one JSON command per line on stdin, each
    answered by one JSON line on stdout; calls are serialised."""

    def __init__(self, wid: int, script: str, cfg: dict[str, Any], secret: str, log_path: str,
                 limit: int = 64 << 20) -> None:
        self.wid = wid
        self.script = script
        self.cfg = cfg
        self.secret = secret
        self.log_path = log_path
        self.limit = limit
        self.proc: asyncio.subprocess.Process | None = None
        self.n = 0
        self._log: Any = None
        self.lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        env = dict(os.environ, BENCH_JWT_SECRET=self.secret, PYTHONHASHSEED="0")
        self._log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, self.script), json.dumps(self.cfg), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            limit=self.limit, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"load generator {self.wid} did not start; see {self.log_path}")

    async def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.n += 1
            self.proc.stdin.write((json.dumps({"cmd": cmd, "id": self.n, **kw}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load generator {self.wid} exited during {cmd}; see {self.log_path}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load generator {self.wid}: {cmd} failed: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.call("quit", timeout=20.0)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except asyncio.TimeoutError:
                self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), 10.0)
        if self._log is not None:
            self._log.close()


async def serve_lines(make_worker: Callable[[dict[str, Any]], Any], name: str,
                      after: Callable[[str], None] | None = None) -> None:
    """A load-generator process's main loop: raise the open-file limit to
    the hard limit, build the worker from the JSON config in argv[1], say
    ready, then run ``cmd_<name>`` for each JSON command line on stdin and
    answer each with one JSON line (``after(cmd)`` runs after a command
    that succeeded); ``quit`` or the end of stdin ends it."""
    import resource

    cfg = json.loads(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = make_worker(cfg)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(reply: dict[str, Any]) -> None:
        out.write(json.dumps(reply, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()

    answer({"ready": True, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            result = getattr(worker, f"cmd_{cmd}")(msg)
            if asyncio.iscoroutine(result):
                result = await result
            reply = {"id": msg.get("id"), "ok": True, **result}
            if after is not None:
                after(cmd)
        except Exception as e:
            print(f"{name} {getattr(worker, 'wid', '?')}: {cmd} failed: {e!r}", file=sys.stderr, flush=True)
            reply = {"id": msg.get("id"), "ok": False, "error": repr(e)}
        answer(reply)
        if cmd == "quit":
            break


ROOT = os.path.dirname(HERE)


def revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "supportchat", "conf"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes in supportchat/ or conf/' if dirty else ''}"


def replace_block(text: str, start: str, end: str, markdown: str, heading: str) -> str:
    """``text`` with what lies between the markers ``start`` and ``end``
    replaced by ``markdown``; without the markers, the block is appended
    under ``heading``."""
    block = f"{start}\n\n{markdown}\n\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"


async def redis_answers(port: int, proc: Any = None, attempts: int = 100) -> bool:
    """Whether a redis-server on this loopback port answers PING within
    ``attempts`` tries 0.1 s apart (False at once if ``proc`` has exited)."""
    for _ in range(attempts):
        if proc is not None and proc.returncode is not None:
            return False
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
            w.write(b"PING\r\n")
            line = await asyncio.wait_for(r.readline(), 2.0)
            w.close()
            if line.startswith(b"+PONG"):
                return True
        except (OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    return False
