"""The web UI in a real browser: headless Chromium from the Debian package
(/usr/bin/chromium) driven by Playwright for Python, never a downloaded
browser. The scenario itself is tests/browser/ui_scenario.py, run as a
subprocess (Playwright's sync API brings its own event loop) against a
``twistd supportchat run`` process that it starts, kills with SIGKILL
mid-conversation and starts again. Screenshots and WebSocket frame logs land
in test-artifacts/browser/ (with axe.json: every axe-core finding per page);
with SUPPORTCHAT_TEST_UPDATE_SCREENSHOTS=1 the README's copies in
docs/screenshots/ are refreshed too. axe-core comes from the npm registry:
the test runs `npm ci` in tests/browser (pinned by its package-lock.json)
into the git-ignored tests/browser/node_modules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet import utils
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import REPO, python_env

CHROMIUM = "/usr/bin/chromium"
SCRIPT = os.path.join(REPO.path, "tests", "browser", "ui_scenario.py")
AUTH_SCRIPT = os.path.join(REPO.path, "tests", "browser", "auth_scenario.py")
ATTACH_SCRIPT = os.path.join(REPO.path, "tests", "browser", "attachments_scenario.py")
ARTIFACTS = os.path.join(REPO.path, "test-artifacts", "browser")
SCREENSHOTS = os.path.join(REPO.path, "docs", "screenshots")
BROWSER_DIR = os.path.join(REPO.path, "tests", "browser")
AXE_JS = os.path.join(BROWSER_DIR, "node_modules", "axe-core", "axe.min.js")


def _install_axe() -> str | None:
    """axe-core from the npm registry into tests/browser/node_modules (git-ignored),
    exactly as pinned by tests/browser/package-lock.json; an error text, or None."""
    if os.path.exists(AXE_JS):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is missing: the browser tests install axe-core with it (apt-get install npm)"
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=BROWSER_DIR,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not os.path.exists(AXE_JS):
        return "npm ci in tests/browser failed:\n" + done.stdout[-2000:] + done.stderr[-2000:]
    return None


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return (f"{CHROMIUM} is missing: install Debian's package (sudo apt-get install --no-install-recommends"
                " chromium), or run `bash .ci/run`, which installs it and then runs `make test`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright for Python is missing (`make test` installs it from requirements/test.txt)"
    return _install_axe()


class BrowserTests(unittest.TestCase):
    timeout = 600

    def setUp(self) -> None:
        reason = _missing()
        if reason and os.environ.get("SUPPORTCHAT_TEST_REQUIRE_BROWSER") == "1":
            self.fail(reason + " (SUPPORTCHAT_TEST_REQUIRE_BROWSER=1, as .ci/run sets)")
        if reason:
            raise unittest.SkipTest(reason)

    @inlineCallbacks
    def test_customer_and_agent_full_conversation_survives_server_restart(self) -> Any:
        """A customer (demo page widget) and an agent (console) in two browser
        contexts: bot greeting and handoff when the bot is on, accept, typing
        both ways, read receipts, a canned reply, the unread badge; then the
        server is killed mid-conversation with messages in flight and queued on
        both sides, restarted, and both screens converge on exactly the
        server's history (nothing lost, nothing doubled); an offline message
        survives two page reloads; the widget fills a 390 px mobile screen;
        agents' names on their messages, safe links, dir=auto bodies; then a
        zh-CN visitor and agent (widget, bot greeting, quick reply and events
        in Chinese; the console in Chinese) and an Arabic widget laid out
        right to left; axe-core finds no serious or critical violation on
        the demo page, the open widget and the console (desktop and 390 px,
        English and Chinese); screenshots of both pages in both languages."""
        result = yield self.scenario(SCRIPT)
        for name in ("widget.png", "console.png", "widget-mobile.png", "widget-zh.png", "console-zh.png", "widget-ar.png"):
            self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, name)) > 1000, name)
        self.assertIn("both screens show exactly the server's", " ".join(result["checks"]))

    @inlineCallbacks
    def test_authentication_failures_ask_to_sign_in_again(self) -> Any:
        """A refused token is shown as such, with a way to sign in again, and
        never as an endless reconnect: the console with an expired token
        (English and Chinese) and with one signed by a wrong secret shows the
        sign-in form with the reason after at most one connect attempt; a
        refresh token renews an expired access token silently; an agent
        disabled while connected is told at once; a refused anonymous visitor
        becomes a new visitor silently; an integrator's refused token (widget
        on another origin) gets a clear message until SupportChat.setToken; a
        server killed and restarted is still reconnected to."""
        result = yield self.scenario(AUTH_SCRIPT)
        self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, "console-signin-again.png")) > 1000)
        self.assertIn("server killed and restarted: the console reconnects", " ".join(result["checks"]))

    @inlineCallbacks
    def test_visitor_and_agent_exchange_a_screenshot_and_a_pdf(self) -> Any:
        """A visitor pastes a screenshot into the widget: it is uploaded and
        sent, the agent's console shows its thumbnail and opens the full
        image in a lightbox through its signed link; the agent attaches a
        PDF and the visitor gets a file card that downloads it; a file
        dropped on the widget is sent; an upload the network cut off is
        kept (IndexedDB) and sent after a reload; an executable named
        .png and an SVG are refused with the reason in the visitor's
        language (English, Chinese)."""
        result = yield self.scenario(ATTACH_SCRIPT)
        self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, "console-attachments.png")) > 1000)
        self.assertIn("the agent opens it: the full screenshot (1000 x 720) in a lightbox, through its signed link",
                      result["checks"])

    @inlineCallbacks
    def scenario(self, script: str) -> Any:
        """Run a scenario script; its JSON result, or fail with its checks so far."""
        args = [script, ARTIFACTS]
        if os.environ.get("SUPPORTCHAT_TEST_UPDATE_SCREENSHOTS") == "1":
            args.append(SCREENSHOTS)
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, args, env=python_env(), path=REPO.path)
        lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("{")]
        self.assertTrue(lines, "no result from the browser scenario:\n" + err.decode("utf-8", "replace")[-4000:])
        result = json.loads(lines[-1])
        if not result["ok"]:
            self.fail("browser scenario failed after: " + "; ".join(result["checks"]) + "\n" + result.get("error", "")
                      + "\n" + result.get("traceback", "")[-3000:] + "\nartifacts: " + ARTIFACTS)
        return result
