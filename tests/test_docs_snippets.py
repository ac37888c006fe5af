"""Every fenced shell command and Python snippet of README.md and docs/*.md
runs in the suite, against a real ``twistd -n supportchat run``.

A document's blocks run in order, in one fresh working directory, against
one server started on the embedded defaults (generated JWT secret, bot on)
with its data in ``./data`` of that directory, as ``make run`` keeps it:
so the documented commands chain the way a reader runs them (README's
``supportchat-admin token ... > agent.token`` writes the file the Python
tour reads). ``http://127.0.0.1:8080`` in a block becomes the test server's
address. ``.venv/bin/<tool>`` resolves to a ``.venv/bin`` in that directory
holding the interpreter running the suite, its tools and this checkout's
console scripts (also on ``PATH``). Shell blocks run with ``bash -e`` on a
terminal; a password prompt is answered. Python blocks run with the suite's
interpreter.

A block that cannot run here says why in an HTML comment right before it:

    <!-- snippet: not run: <the reason> -->

Every fenced block must name its language (``text`` for listings and
diagrams), so a command cannot hide in an untagged block.

docs/protocol.md's worked example (a ``text`` log of frames) is replayed
against a server, frame for frame.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from configparser import ConfigParser
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.defer import inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from tests.support import REPO, ServerProcess, free_port, python_env

SHELL = frozenset({"sh", "bash", "shell", "console"})
PYTHON = frozenset({"python", "py"})
SNIPPET_TIMEOUT = 45.0
PASSWORD = "snippet-password-1"
DOC_ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost):8080\b")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
_ANNOTATION = re.compile(r"<!--\s*snippet:\s*(?P<text>.*?)\s*-->\s*$", re.S)
_NOT_RUN = re.compile(r"not run:\s*(?P<reason>\S.*)", re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    path: str  # as shown in reports, relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word, lower case; "" when untagged
    text: str
    annotation: str | None  # the text after "snippet:" in the comment right before the fence

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def executable(self) -> bool:
        return self.lang in SHELL or self.lang in PYTHON

    @property
    def runs(self) -> bool:
        return self.executable and self.annotation is None


def _annotation_before(lines: list[str], fence: int) -> str | None:
    """The ``snippet:`` comment ending on the last non-blank line before ``fence``."""
    end = fence - 1
    while end >= 0 and not lines[end].strip():
        end -= 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return None
    start = end
    while start > 0 and "<!--" not in lines[start]:
        start -= 1
    comment = "\n".join(lines[start:end + 1]).strip()
    match = _ANNOTATION.match(comment)
    return " ".join(match.group("text").split()) if match else None


def extract(markdown: str, path: str) -> list[Block]:
    """The fenced blocks of ``markdown``, in order (an unclosed fence runs to the end)."""
    lines = markdown.split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening.group("fence")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[j])
            j += 1
        blocks.append(Block(path, i + 1, opening.group("lang").lower(), "\n".join(body) + "\n",
                            _annotation_before(lines, i)))
        i = j + 1
    return blocks


def problems(blocks: list[Block]) -> list[str]:
    """Why each block that is neither run nor properly annotated is wrong."""
    found = []
    for block in blocks:
        if not block.lang:
            found.append(f"{block.where}: a fenced block without a language; tag it "
                         "(sh or python to be run, text for listings and diagrams)")
        elif block.annotation is not None:
            if _NOT_RUN.fullmatch(block.annotation) is None:
                found.append(f"{block.where}: unknown annotation {block.annotation!r}; "
                             "the only one is 'not run: <reason>'")
            elif not block.executable:
                found.append(f"{block.where}: a {block.lang} block is never run; drop its annotation")
    return found


def documents() -> list[FilePath]:
    """README.md and every docs/*.md."""
    return [REPO.child("README.md")] + sorted(REPO.child("docs").globChildren("*.md"))


def document_blocks(doc: FilePath) -> list[Block]:
    return extract(doc.getContent().decode("utf-8"), os.path.relpath(doc.path, REPO.path))


def console_scripts() -> dict[str, str]:
    """``name: module:function`` from setup.cfg's console_scripts."""
    cfg = ConfigParser()
    cfg.read(REPO.child("setup.cfg").path)
    entries = cfg.get("options.entry_points", "console_scripts", fallback="")
    scripts = {}
    for entry in entries.strip().splitlines():
        name, _, target = entry.partition("=")
        scripts[name.strip()] = target.strip()
    return scripts


def make_venv_bin(work: FilePath) -> FilePath:
    """``work/.venv/bin``: the running interpreter's tools and this
    checkout's console scripts, as small wrappers."""
    bindir = work.descendant([".venv", "bin"])
    bindir.makedirs()

    def wrapper(name: str, command: str) -> None:
        script = bindir.child(name)
        script.setContent(f"#!/bin/sh\nexec {command} \"$@\"\n".encode())
        script.chmod(0o755)

    real = os.path.dirname(sys.executable)
    for name in sorted(os.listdir(real)):
        full = os.path.join(real, name)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            wrapper(name, shlex.quote(full))
    wrapper("python", shlex.quote(sys.executable))
    for name, target in console_scripts().items():
        module, _, function = target.partition(":")
        code = f"import sys; from {module} import {function}; sys.exit({function}())"
        wrapper(name, f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    return bindir


def script_for(block: Block, port: int) -> str:
    """The block as a script, addressed to the test server. It starts with
    blank lines, so a line number in an error or traceback is the line of
    the markdown file."""
    text = DOC_ADDRESS.sub(f"127.0.0.1:{port}", block.text)
    if block.lang == "console":  # only the "$ " lines are commands
        text = "".join((line[2:] if line.startswith("$ ") else "") + "\n" for line in text.splitlines())
    return "\n" * block.line + text


class _Snippet(protocol.ProcessProtocol):
    """Collects the output; types ``PASSWORD`` at each password prompt."""

    def __init__(self) -> None:
        self.output = b""
        self._answered = 0
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        if re.search(rb"password: $", self.output[self._answered:], re.I):
            self._answered = len(self.output)
            assert self.transport is not None
            self.transport.write(PASSWORD.encode() + b"\n")

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


class ExtractorTests(unittest.TestCase):
    """The block extractor and its annotation rules, on small documents."""

    SAMPLE = "\n".join([
        "# Title",                                   # 1
        "```sh",                                     # 2
        "echo run me",                               # 3
        "```",                                       # 4
        "<!-- snippet: not run: needs root -->",     # 5
        "",                                          # 6
        "```bash",                                   # 7
        "useradd x",                                 # 8
        "```",                                       # 9
        "```",                                       # 10
        "make run",                                  # 11
        "```",                                       # 12
        "<!-- snippet: skip -->",                    # 13
        "```python",                                 # 14
        "print(1)",                                  # 15
        "```",                                       # 16
        "<!-- bench:results -->",                    # 17
        "````json",                                  # 18
        "```",                                       # 19
        "{}",                                        # 20
        "````",                                      # 21
        "<!-- snippet: not run: never runs -->",     # 22
        "```text",                                   # 23
        "a diagram",                                 # 24
        "```",                                       # 25
    ])

    def test_blocks_languages_lines_and_annotations(self) -> None:
        """Each fenced block is found with its file line, language and the
        annotation right before it (blank lines allowed, other comments ignored);
        a longer fence holds a shorter one."""
        blocks = extract(self.SAMPLE, "x.md")
        self.assertEqual([(b.line, b.lang, b.annotation) for b in blocks], [
            (2, "sh", None), (7, "bash", "not run: needs root"), (10, "", None),
            (14, "python", "skip"), (18, "json", None), (23, "text", "not run: never runs"),
        ])
        self.assertEqual(blocks[0].text, "echo run me\n")
        self.assertEqual(blocks[4].text, "```\n{}\n")
        self.assertEqual([b.line for b in blocks if b.runs], [2])

    def test_unannotated_untagged_and_misannotated_blocks_are_reported(self) -> None:
        """An untagged block, an unknown annotation (the python block would
        then neither run nor say why) and an annotation on a block that never
        runs are each reported with file and line; a plain sh block runs and a
        'not run' one with a reason is accepted."""
        reported = problems(extract(self.SAMPLE, "x.md"))
        self.assertEqual([r.split(": ", 1)[0] for r in reported], ["x.md:10", "x.md:14", "x.md:23"])
        self.assertIn("without a language", reported[0])
        self.assertIn("unknown annotation 'skip'", reported[1])

    def test_not_run_needs_a_reason(self) -> None:
        """'not run:' without a reason is not an annotation the suite accepts."""
        reported = problems(extract("<!-- snippet: not run: -->\n```sh\nmake test\n```\n", "y.md"))
        self.assertEqual(len(reported), 1)
        self.assertIn("y.md:2: unknown annotation", reported[0])

    def test_address_and_console_prompts(self) -> None:
        """The documented address is pointed at the test server; a console
        block runs only its "$ " lines; the script's line numbers are the
        markdown file's."""
        block = Block("z.md", 1, "console", "$ curl http://127.0.0.1:8080/healthz\nok\n", None)
        self.assertEqual(script_for(block, 4321), "\ncurl http://127.0.0.1:4321/healthz\n\n")

    def test_every_document_block_is_run_or_annotated(self) -> None:
        """README.md and docs/*.md: every shell or Python block is either
        run by this module or says why not, and every block names its language."""
        found = [p for doc in documents() for p in problems(document_blocks(doc))]
        self.assertEqual(found, [], "\n" + "\n".join(found))

    def test_readme_tour_is_run(self) -> None:
        """The README's shell commands and its Python tour are among the blocks that run."""
        langs = {b.lang for b in document_blocks(REPO.child("README.md")) if b.runs}
        self.assertIn("python", langs)
        self.assertTrue(langs & SHELL)


class DocumentSnippetTests(unittest.TestCase):
    """The documents' runnable blocks, each document against its own server."""

    timeout = 240

    @inlineCallbacks
    def run_document(self, doc: FilePath) -> Any:
        blocks = [b for b in document_blocks(doc) if b.runs]
        if not blocks:
            return
        work = FilePath(self.mktemp())
        work.makedirs()
        bindir = make_venv_bin(work)
        server = ServerProcess(work.child("data").path, free_port())
        # The embedded defaults, as `make run` serves them.
        for name in ("SUPPORTCHAT_AUTH_JWT_SECRET", "SUPPORTCHAT_BOT_ENABLED"):
            server.env.pop(name, None)
        self.addCleanup(server.kill)
        yield server.start()
        assert server.port is not None
        env = python_env(PATH=bindir.path + os.pathsep + os.environ.get("PATH", ""))
        for block in blocks:
            yield self.run_block(block, work, server, env)

    @inlineCallbacks
    def run_block(self, block: Block, work: FilePath, server: ServerProcess, env: dict[str, str]) -> Any:
        from twisted.internet import reactor

        assert server.port is not None
        name = f"{block.path.replace(os.sep, '_')}-{block.line}.{'py' if block.lang in PYTHON else 'sh'}"
        script = work.child(name)  # README.md-86.py: line 99 of it is line 99 of README.md
        script.setContent(script_for(block, server.port).encode("utf-8"))
        if block.lang in PYTHON:
            args, pty = [sys.executable, script.path], False
        else:
            args, pty = ["/bin/bash", "-e", "-o", "pipefail", script.path], True
        proto = _Snippet()
        reactor.spawnProcess(proto, args[0], args, env=env, path=work.path, usePTY=pty)
        killed = []

        def kill() -> None:
            killed.append(True)
            assert proto.transport is not None
            proto.transport.signalProcess("KILL")

        timer = reactor.callLater(SNIPPET_TIMEOUT, kill)
        code = yield proto.ended
        if timer.active():
            timer.cancel()
        if code != 0 or killed:
            assert server.proto is not None
            why = f"killed after {SNIPPET_TIMEOUT:.0f} s" if killed else f"exit status {code}"
            self.fail(
                f"{block.where}: the {block.lang} block failed ({why}).\n"
                f"--- the block (run in {work.path}) ---\n{block.text}"
                f"--- its output ---\n{proto.output.decode('utf-8', 'replace')}\n"
                f"--- the server's log, last lines ---\n"
                + "\n".join(server.proto.output.decode("utf-8", "replace").splitlines()[-25:])
            )

    def test_readme(self) -> Any:
        """README.md's commands and Python tour run against a real server."""
        return self.run_document(REPO.child("README.md"))

    @inlineCallbacks
    def test_docs(self) -> Any:
        """docs/*.md: each document's runnable blocks run against a real server."""
        for doc in documents()[1:]:
            yield self.run_document(doc)


_FRAME_LINE = re.compile(r"^(?P<who>[CA]) (?P<dir>[<>]) (?P<frame>\{.*\})$")
_VISITORS_LINE = re.compile(r"^POST /api/v1/visitors\s+->\s+(?P<status>\d{3}) (?P<body>\{.*\})$")
_SYMBOL = re.compile(r"^[cmv]\d+$")  # a shortened conversation, message or visitor id
_TIMES = frozenset({"ts", "created_at", "last_ts", "expires_at"})


class _Transcript:
    """Compares documented frames with real ones: shortened ids stand for
    the real ids they first meet, times are any number, ``eyJ...`` any JWT."""

    def __init__(self) -> None:
        self.bound: dict[str, str] = {}

    def real(self, value: Any) -> Any:
        """``value`` with its bound shortened ids replaced by the real ones."""
        if isinstance(value, dict):
            return {k: self.real(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.real(v) for v in value]
        return self.bound.get(value, value) if isinstance(value, str) else value

    def differences(self, expected: Any, actual: Any, where: str = "") -> list[str]:
        if isinstance(expected, dict) and isinstance(actual, dict):
            found = []
            if set(expected) != set(actual):
                found.append(f"{where or 'frame'}: keys {sorted(expected)} documented, {sorted(actual)} sent")
            for key in expected.keys() & actual.keys():
                if key in _TIMES and expected[key] is not None:
                    if not isinstance(actual[key], (int, float)):
                        found.append(f"{where}.{key}: a number documented, {actual[key]!r} sent")
                else:
                    found += self.differences(expected[key], actual[key], f"{where}.{key}")
            return found
        if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
            return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in self.differences(e, a, f"{where}[{i}]")]
        if isinstance(expected, str) and isinstance(actual, str):
            if expected.endswith("...") and actual.startswith(expected[:-3]):
                return []
            if _SYMBOL.match(expected) and expected not in self.bound and actual not in self.bound.values():
                self.bound[expected] = actual
            if self.bound.get(expected, expected) == actual:
                return []
        elif expected == actual and type(expected) is type(actual):
            return []
        return [f"{where or 'frame'}: {expected!r} documented, {actual!r} sent"]


class WorkedExampleTests(unittest.TestCase):
    """docs/protocol.md's worked example is a log a real server reproduces."""

    timeout = 60

    @inlineCallbacks
    def test_protocol_worked_example_replays(self) -> Any:
        """Every frame the example's visitor (C) and agent Ann (A) send is sent
        to a server with the workflow and the bot disabled (as the example
        says), and every frame it shows them receiving is the next one their
        connection receives, field for field; the visitor's "connection drops"
        is a dropped connection, and its second hello a reconnect."""
        from tests.support import close_client, connect, http_client, start_server, token

        doc = REPO.child("docs").child("protocol.md")
        text = doc.getContent().decode("utf-8")
        heading = text[:text.index("## 10. Worked example")].count("\n") + 1
        block = next(b for b in extract(text, "docs/protocol.md") if b.line > heading)
        self.assertEqual(block.lang, "text")
        running = yield start_server(self, workflow={"enabled": False})
        transcript = _Transcript()
        clients: dict[str, Any] = {}
        credentials = {"A": token("ann", "agent", name="Ann")}
        try:
            for offset, line in enumerate(block.text.splitlines(), start=1):
                where = f"{block.path}:{block.line + offset}"
                if not line.strip() or line.startswith("#"):
                    continue
                visitors = _VISITORS_LINE.match(line)
                if visitors:
                    response = yield http_client().post(f"http://127.0.0.1:{running.port}/api/v1/visitors")
                    body = yield response.json()
                    found = transcript.differences(json.loads(visitors.group("body")), body)
                    if response.code != int(visitors.group("status")):
                        found.insert(0, f"status {response.code}")
                    self.assertEqual(found, [], f"{where}: {line}")
                    credentials["C"] = body["token"]
                    continue
                match = _FRAME_LINE.match(line)
                self.assertIsNotNone(match, f"{where}: neither a comment nor a frame: {line}")
                assert match is not None
                who, frame = match.group("who"), json.loads(match.group("frame"))
                if match.group("dir") == "<" and frame.get("type") == "hello":
                    if who in clients:  # the connection dropped: reconnect
                        clients[who].transport.abortConnection()
                        yield clients[who].closed
                    # The visitor authenticates in the URL, Ann with a header, as the example says.
                    clients[who] = yield (
                        connect(running.port, query="?access_token=" + credentials[who], wait_hello=False)
                        if who == "C" else connect(running.port, credentials[who], wait_hello=False))
                if match.group("dir") == ">":
                    clients[who].send(transcript.real(frame))
                    continue
                actual = yield clients[who].next_frame()
                found = transcript.differences(frame, actual)
                self.assertEqual(found, [], f"{where}: {who} received\n{json.dumps(actual)}\ninstead of\n{line[4:]}")
        finally:
            for client in clients.values():
                yield close_client(client)
