"""Drive the web UI in headless Chromium (Debian's /usr/bin/chromium, through
Playwright for Python): a customer on the demo page and an agent in the
console, in two browser contexts, hold a whole conversation against a real
``twistd supportchat run`` process that this script starts, kills (SIGKILL)
mid-conversation and starts again. Prints one JSON object on stdout:
``{"ok": bool, "checks": [...], "error": ...}``. Run by tests/test_browser.py.

    python tests/browser/ui_scenario.py ARTIFACT_DIR [SCREENSHOT_DIR]
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import urllib.error
import urllib.request
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.support import SECRET, free_port, token  # noqa: E402

# The server's profile keyring (phone numbers are encrypted at rest), fresh per run.
KEYRING = json.dumps({"active": "k1", "keys": {"k1": base64.b64encode(os.urandom(32)).decode()}})
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
WAIT = 20_000  # ms, the bound on every wait for a page condition
# axe-core from the npm registry, pinned by tests/browser/package-lock.json and
# installed by tests/test_browser.py (`npm ci` into the git-ignored node_modules).
AXE_JS = os.path.join(REPO, "tests", "browser", "node_modules", "axe-core", "axe.min.js")
AXE_RUN = """async () => {
  const r = await axe.run(document, { resultTypes: ["violations"] });
  return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => n.target.map((t) => [].concat(t).join(" >> ")).join(" ")) }));
}"""


def axe_check(page: Any, what: str, log: dict[str, Any], strict: bool = False) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is (shadow roots included); every
    violation goes to ``log[what]``; a serious or critical one (any one when
    ``strict``) fails."""
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.add_script_tag(path=AXE_JS)
    found: list[dict[str, Any]] = page.evaluate(AXE_RUN)
    log[what] = found
    bad = [v for v in found if strict or v["impact"] in ("serious", "critical")]
    assert not bad, (what, bad)
    return found

WIDGET_MESSAGES = """() => {
  const root = document.querySelector('#supportchat-widget').shadowRoot;
  return [...root.querySelectorAll('ol.messages > li')].map((li) => ({
    seq: li.dataset.seq ? Number(li.dataset.seq) : null, cls: li.className,
    status: li.dataset.status || null,
    body: li.dataset.event !== undefined ? 'event:' + li.dataset.event : (li.querySelector('.sc-body') || li).textContent }));
}"""
CONSOLE_MESSAGES = """() => [...document.querySelectorAll('#messages > li')].map((li) => ({
    seq: li.dataset.seq ? Number(li.dataset.seq) : null, cls: li.className,
    status: li.dataset.status || null,
    body: li.dataset.event !== undefined ? 'event:' + li.dataset.event : (li.querySelector('.sc-body') || li).textContent }))"""


def bot_enabled() -> bool:
    """Whether the server, as configured for this run, has the first-line bot on."""
    from supportchat.config import load_config

    cfg = load_config(None, environ={"SUPPORTCHAT_AUTH_JWT_SECRET": SECRET})
    bot = getattr(cfg, "bot", None)
    return bool(bot is not None and getattr(bot, "enabled", False))


def workflow_enabled() -> bool:
    """Whether the support workflow (issue 5: transfer, close, rating) is on."""
    from supportchat.config import load_config

    cfg = load_config(None, environ={"SUPPORTCHAT_AUTH_JWT_SECRET": SECRET})
    wf = getattr(cfg, "workflow", None)
    return bool(wf is not None and getattr(wf, "enabled", False))


class Server:
    """``twistd -n supportchat run`` on a fixed port, restartable."""

    def __init__(self, data_dir: str, port: int, log_path: str, env: dict[str, str] | None = None) -> None:
        self.extra_env = env or {}
        self.data_dir = data_dir
        self.port = port
        self.log = open(log_path, "a", encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTCHAT_")}
        env.update(SUPPORTCHAT_AUTH_JWT_SECRET=SECRET, SUPPORTCHAT_PROFILE_KEYRING=KEYRING, PYTHONPATH=REPO,
                   PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "supportchat", "run", "--data-dir", self.data_dir, "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.write(line)
                self.log.flush()
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        marker = f"Site starting on {self.port}"
        while True:
            line = lines.get(timeout=60)
            if marker in line:
                return
            if line == "":
                raise RuntimeError("server exited before listening; see server.log")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Scenario:
    def __init__(self, artifacts: str, shots: str | None) -> None:
        self.artifacts = artifacts
        self.shots = shots
        self.checks: list[str] = []
        self.axe_log: dict[str, Any] = {}

    def check(self, what: str) -> None:
        self.checks.append(what)

    def axe(self, page: Any, what: str) -> None:
        """No serious or critical axe-core violation on the page as it is (all are logged)."""
        try:
            found = axe_check(page, what, self.axe_log)
        finally:
            self._save_axe()
        minor = f" ({len(found)} moderate/minor: {', '.join(sorted({v['id'] for v in found}))})" if found else ""
        self.check(f"axe-core: no serious or critical violations on {what}{minor}")

    def _save_axe(self) -> None:
        with open(os.path.join(self.artifacts, "axe.json"), "w", encoding="utf-8") as f:
            json.dump(self.axe_log, f, indent=1, ensure_ascii=False)

    def run(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        self.expect = expect
        expect.set_options(timeout=WAIT)
        data_dir = tempfile.mkdtemp(prefix="sc-ui-")
        # [email] on (the widget's offline form); nothing listens on the SMTP
        # port, so the emails stay queued (tests/test_email.py sends them).
        self.server = Server(data_dir, free_port(), os.path.join(self.artifacts, "server.log"), env={
            "SUPPORTCHAT_EMAIL_ENABLED": "true", "SUPPORTCHAT_EMAIL_FROM_ADDRESS": "help@example.com",
            "SUPPORTCHAT_EMAIL_SMTP_HOST": "127.0.0.1", "SUPPORTCHAT_EMAIL_SMTP_PORT": str(free_port())})
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.port}"
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    self.conversation(browser)
                finally:
                    browser.close()
        finally:
            self.server.stop()

    # -- helpers ---------------------------------------------------------
    def widget_messages(self, page: Any) -> list[dict[str, Any]]:
        return list(page.evaluate(WIDGET_MESSAGES))

    def console_messages(self, page: Any) -> list[dict[str, Any]]:
        return list(page.evaluate(CONSOLE_MESSAGES))

    def log_frames(self, page: Any, who: str) -> None:
        """Every WebSocket frame of a page, to test-artifacts/ws-WHO.log (for diagnosis)."""
        log = open(os.path.join(self.artifacts, f"ws-{who}.log"), "w", encoding="utf-8")

        def on_ws(ws: Any) -> None:
            log.write(f"== open {ws.url.split('?')[0]}\n")
            ws.on("framesent", lambda payload: (log.write(f"> {payload}\n"), log.flush()))
            ws.on("framereceived", lambda payload: (log.write(f"< {payload}\n"), log.flush()))
            ws.on("close", lambda _ws: (log.write("== closed\n"), log.flush()))

        page.on("websocket", on_ws)

    def shot(self, page: Any, name: str, readme: bool = True) -> None:
        page.screenshot(path=os.path.join(self.artifacts, name))
        if self.shots and readme:
            os.makedirs(self.shots, exist_ok=True)
            page.screenshot(path=os.path.join(self.shots, name))

    def put_profile(self, customer: str, profile: dict[str, Any]) -> None:
        """What an integrator does: replace the customer's profile over REST (admin token)."""
        req = urllib.request.Request(f"{self.base}/api/v1/customers/{customer}/profile", method="PUT",
                                     data=json.dumps(profile).encode(),
                                     headers={"Authorization": "Bearer " + token("integrator", "admin"),
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def customer_send(self, page: Any, text: str) -> None:
        box = page.locator("#supportchat-widget textarea.input")
        box.fill(text)
        box.press("Enter")

    def agent_send(self, page: Any, text: str) -> None:
        box = page.locator("#composer-input")
        box.fill(text)
        box.press("Enter")

    # -- the scenario ----------------------------------------------------
    def conversation(self, browser: Any) -> None:
        expect = self.expect
        cust_ctx = browser.new_context(viewport={"width": 1000, "height": 720}, locale="en-US", bypass_csp=True)
        agent_ctx = browser.new_context(viewport={"width": 1100, "height": 720}, locale="en-US", bypass_csp=True)
        cust = cust_ctx.new_page()
        agent = agent_ctx.new_page()
        errors: list[str] = []
        for who, page in (("customer", cust), ("agent", agent)):
            page.on("pageerror", lambda e, who=who: errors.append(f"{who}: {e}"))
            self.log_frames(page, who)
        failed: list[str] = []  # requests the browser logs as failed (a customer without a profile must not be one)
        agent.on("console", lambda m: failed.append(f"{m.text} {m.location.get('url', '')}")
                 if m.type == "error" and "404" in m.text else None)

        # The demo page and the widget.
        cust.goto(self.base + "/")
        launcher = cust.locator("#supportchat-widget .launcher")
        expect(launcher).to_be_visible()
        self.axe(cust, "the demo page, widget closed (en, 1000 px)")
        expect(launcher).to_have_attribute("aria-expanded", "false")
        launcher.focus()
        cust.keyboard.press("Enter")  # keyboard opens it
        expect(launcher).to_have_attribute("aria-expanded", "true")
        panel = cust.locator("#supportchat-widget [role=dialog]")
        expect(panel).to_be_visible()
        expect(cust.locator("#supportchat-widget .conn")).to_have_text("Online")
        self.check("widget opens from the keyboard and connects with an anonymous visitor token")
        if bot_enabled():
            expect(cust.locator("#supportchat-widget .intro")).to_contain_text("I'm the support bot")
            expect(cust.locator("#supportchat-widget .intro-quick .sc-chip", has_text="Talk to a human")).to_be_visible()
        if workflow_enabled():
            expect(cust.locator("#supportchat-widget .expect")).to_contain_text("No agent is online right now")
            code, inbox = self.api("GET", "/inbox", token("boss", "admin"))
            assert (code, inbox["conversations"]) == (200, []), (code, inbox)
        self.check("on opening, the greeting, quick replies and what to expect (nobody online) come from "
                   "/api/v1/widget-config, and no conversation is created")
        # Focus stays in the open dialog: Tab and Shift+Tab cycle through its controls only.
        inside = """() => { const root = document.querySelector('#supportchat-widget').shadowRoot;
            return document.activeElement === root.host && root.activeElement !== null
                   && root.querySelector('[role=dialog]').contains(root.activeElement); }"""
        cust.locator("#supportchat-widget textarea.input").focus()
        for key in ["Tab"] * 12 + ["Shift+Tab"] * 12:
            cust.keyboard.press(key)
            assert cust.evaluate(inside), f"focus left the open widget dialog after {key}"
        cust.locator("#supportchat-widget textarea.input").focus()
        self.check("keyboard focus stays inside the open widget dialog (Tab and Shift+Tab)")

        self.customer_send(cust, "Where is my order?")
        first = cust.locator("#supportchat-widget li.sc-own", has_text="Where is my order?")
        expect(first).to_have_attribute("data-status", re.compile("sent|seen"))
        expect(first).to_have_attribute("data-seq", re.compile(r"^\d+$"))
        self.check("customer message is acknowledged")
        if workflow_enabled():
            # Nobody online: the offline form offers to take an email address.
            group = cust.locator("#supportchat-widget .email")
            expect(group).to_be_visible()
            address = cust.locator("#supportchat-widget #sc-email")
            address.fill("not an address")
            cust.locator("#supportchat-widget .email button").click()
            expect(group.locator(".email-status")).to_contain_text("Please enter an email address")
            address.fill("visitor@example.org")
            cust.locator("#supportchat-widget #sc-email-transcript").check()
            address.press("Enter")
            expect(group.locator(".email-status")).to_contain_text("replies will also go to visitor@example.org")
            self.axe(cust, "widget offline email form")
            self.check("nobody online: the widget's offline form refuses a bad address and keeps a good one "
                       "(POST /api/v1/email) with the transcript asked for")
        if bot_enabled():
            # The first-line bot (issue 6) greets and answers: ask it for a human,
            # with its quick-reply button when it offers one.
            own = int(first.get_attribute("data-seq") or 0)
            expect(cust.locator("#supportchat-widget li.sc-role-bot").last).to_have_attribute(
                "data-seq", re.compile(r"^\d+$"))
            cust.wait_for_function(
                """(own) => [...document.querySelector('#supportchat-widget').shadowRoot
                     .querySelectorAll('li.sc-role-bot')].some((li) => Number(li.dataset.seq) > own)""",
                arg=own, timeout=WAIT)
            # the answer to the question (not only the greeting) is on screen: its buttons are the last ones
            expect(cust.locator('#supportchat-widget li.sc-role-bot[data-cid^="bot:m"]').first).to_be_visible()
            self.check("the bot greets and answers")
            chip = cust.locator("#supportchat-widget .sc-chip", has_text="Talk to a human")
            if chip.count():
                chip.first.click()
                self.check("bot quick-reply button used")
            else:
                self.customer_send(cust, "human")
            expect(cust.locator("#supportchat-widget li.sc-own", has_text="human")).to_have_attribute("data-status", re.compile("sent|seen"))
            expect(cust.locator("#supportchat-widget li.sc-event[data-event=handoff]")).to_have_text(
                "Connecting you with a human agent")
            self.check("a quick reply hands the conversation over to a human; the handoff reads as the UI's own text")
        self.axe(cust, "the open widget with a conversation (en, 1000 px)")

        # The console: token sign-in, queue, accept.
        agent.goto(self.base + "/console")
        expect(agent.locator("#login")).to_be_visible()
        self.axe(agent, "the console's sign-in page (en)")
        agent.locator("#token-login summary").click()
        agent.locator("#login-token").fill(token("alice", "agent", name="Alice"))
        agent.locator("#token-submit").click()
        expect(agent.locator("#conn")).to_have_text("Connected")
        item = agent.locator("#queue li.queue-item")
        expect(item).to_have_count(1)
        expect(item).to_contain_text("waiting")
        self.check("console signs in with a token and lists the waiting conversation with its waiting time")
        item.locator("button.accept").click()
        expect(agent.locator("#messages li.sc-msg", has_text="Where is my order?")).to_have_count(1)
        expect(agent.locator("#messages li.sc-event[data-event=joined]")).to_have_count(1)
        expect(cust.locator("#supportchat-widget li.sc-event[data-event=joined]")).to_contain_text("Alice joined")
        expect(agent.locator("#queue li.queue-item")).to_have_count(0)
        self.check("agent accepts: the join event reaches both screens, the history before the join is shown")

        # The customer panel: the integrator's profile, phone masked by the server; a change shows at once.
        customer = agent.evaluate("() => [...window.scConsole.conversations.values()][0].info.customer_id")
        self.put_profile(customer, {"name": "Dana Scully", "phone": "+1 202 555 0143", "attributes": {"plan": "gold"}})
        profile_panel = agent.locator("#profile")
        expect(profile_panel.locator("dd[data-field=Name]")).to_have_text("Dana Scully")
        expect(profile_panel.locator("dd[data-field=Phone]")).to_have_class("masked")
        expect(profile_panel.locator("dd[data-field=Phone]")).to_contain_text("0143")
        assert "555" not in profile_panel.inner_text(), "the agent saw the unmasked phone"
        self.put_profile(customer, {"name": "Dana K. Scully", "phone": "+1 202 555 0143"})
        expect(profile_panel.locator("dd[data-field=Name]")).to_have_text("Dana K. Scully")
        expect(profile_panel.locator("dd[data-field=plan]")).to_have_count(0)
        expect(agent.locator("#mine li.mine-item .title")).to_have_text("Dana K. Scully")
        self.check("the customer panel shows the profile with the phone masked, and a change to it at once; "
                   "the conversation list names the customer")

        # Typing and a reply.
        agent.locator("#composer-input").press_sequentially("Let me check", delay=20)
        expect(cust.locator("#supportchat-widget .typing")).to_have_text("Alice is typing…")
        self.check("customer sees the agent typing")
        agent.locator("#composer-input").fill("Let me check that for you.")
        agent.locator("#composer-input").press("Enter")
        expect(cust.locator("#supportchat-widget li.sc-other", has_text="Let me check that for you.")).to_have_count(1)
        reply = agent.locator("#messages li.sc-own", has_text="Let me check that for you.")
        expect(reply).to_have_attribute("data-status", "seen")
        self.check("agent's reply reaches the customer, and the agent sees the read receipt")
        expect(cust.locator("#supportchat-widget li.sc-other", has_text="Let me check that for you.").locator(".sc-who")
               ).to_have_text("Alice")
        expect(cust.locator("#supportchat-widget li.sc-event[data-event=joined]")).to_have_text("Alice joined the conversation")
        self.check("the visitor sees the agent's name on the agent's messages, not \"Agent\"")
        cust.locator("#supportchat-widget textarea.input").press_sequentially("Thanks", delay=20)
        expect(agent.locator("#typing")).to_have_text("Customer is typing…")
        cust.locator("#supportchat-widget textarea.input").press("Enter")
        expect(cust.locator("#supportchat-widget li.sc-own", has_text="Thanks")).to_have_attribute("data-status", "seen")
        self.check("customer typing shows in the console; customer's message is read by the agent")

        # Canned replies from the server: an admin adds team replies while the
        # console is open (live), a shortcut prefix ranks first, the agent saves one.
        if workflow_enabled():
            self.canned(agent, cust)

        # Links: http(s) only, opened safely; message bodies lay out by their own direction.
        self.agent_send(agent, "Track it at https://example.com/track?id=7. Not a link: javascript:alert(1)")
        linked = cust.locator("#supportchat-widget li.sc-other", has_text="Track it at")
        link = linked.locator("a")
        expect(link).to_have_count(1)
        expect(link).to_have_attribute("href", "https://example.com/track?id=7")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        expect(link).to_have_attribute("target", "_blank")
        expect(linked.locator(".sc-body")).to_have_attribute("dir", "auto")
        assert agent.evaluate("() => [...document.querySelectorAll('#messages .sc-body')].every((b) => b.dir === 'auto')")
        self.check("links are linkified (http/https only, rel=noopener noreferrer); every body has dir=auto")

        # Unread badge while the panel is closed.
        cust.locator("#supportchat-widget .x").click()
        expect(panel).to_be_hidden()
        self.agent_send(agent, "It ships tomorrow.")
        badge = cust.locator("#supportchat-widget .badge")
        expect(badge).to_have_text("1")
        expect(badge).to_be_visible()
        launcher.click()
        expect(badge).to_be_hidden()
        expect(agent.locator("#messages li.sc-own", has_text="It ships tomorrow.")).to_have_attribute("data-status", "seen")
        self.check("unread badge on the launcher while closed; opening reads it")

        # Server killed mid-conversation: one message in flight at the kill,
        # one from each side while it is down, and a page reload on the customer's side.
        self.customer_send(cust, "Sent just before the crash")
        self.server.kill()
        expect(cust.locator("#supportchat-widget .conn")).to_have_text("Offline, reconnecting…")
        expect(agent.locator("#conn")).to_have_text("Offline, reconnecting…")
        self.customer_send(cust, "Sent while the server was down")
        expect(cust.locator("#supportchat-widget li.sc-pending", has_text="while the server was down")).to_have_attribute("data-status", "sending")
        self.agent_send(agent, "Agent reply while down")
        expect(agent.locator("#messages li.sc-pending", has_text="Agent reply while down")).to_have_count(1)
        self.check("while the server is down, unsent messages stay on screen as pending")
        self.server.start()
        expect(cust.locator("#supportchat-widget .conn")).to_have_text("Online", timeout=40_000)
        expect(agent.locator("#conn")).to_have_text("Connected", timeout=40_000)
        for page, sel in ((cust, "#supportchat-widget li.sc-msg"), (agent, "#messages li.sc-msg")):
            expect(page.locator(sel + ".sc-pending")).to_have_count(0)
            for text in ("Sent just before the crash", "Sent while the server was down", "Agent reply while down"):
                expect(page.locator(sel, has_text=text)).to_have_count(1)
        self.check("after the restart both screens reconnect and every pending message is acknowledged")

        self.agent_send(agent, "Anything else?")
        expect(cust.locator("#supportchat-widget li.sc-other", has_text="Anything else?")).to_have_count(1)
        self.customer_send(cust, "No, that's all")
        expect(agent.locator("#messages li.sc-other", has_text="No, that's all")).to_have_count(1)
        expect(cust.locator("#supportchat-widget li.sc-own", has_text="No, that's all")).to_have_attribute("data-status", "seen")

        # The outbox survives a page reload: the customer's WebSocket is cut
        # (the page itself still loads), a message is typed, the page is
        # reloaded twice, then the network comes back.
        blocked = {"on": True}

        def route(ws: Any) -> None:
            if blocked["on"]:
                ws.close(code=1011, reason="test: network down")
            else:
                ws.connect_to_server()

        cust.route_web_socket(re.compile(r"/ws$"), route)
        cust.reload()
        cust.locator("#supportchat-widget .launcher").click()
        expect(cust.locator("#supportchat-widget .conn")).to_have_text("Offline, reconnecting…")
        self.customer_send(cust, "Typed offline, then reloaded")
        expect(cust.locator("#supportchat-widget li.sc-pending", has_text="Typed offline")).to_have_count(1)
        for _ in range(2):
            cust.reload()
            cust.locator("#supportchat-widget .launcher").click()
            expect(cust.locator("#supportchat-widget li.sc-pending", has_text="Typed offline")).to_have_count(1)
        blocked["on"] = False
        cust.evaluate("() => window.dispatchEvent(new Event('online'))")
        expect(cust.locator("#supportchat-widget .conn")).to_have_text("Online", timeout=40_000)
        expect(cust.locator("#supportchat-widget li.sc-msg", has_text="Typed offline")).to_have_count(1)
        expect(cust.locator("#supportchat-widget li.sc-pending")).to_have_count(0)
        expect(agent.locator("#messages li.sc-other", has_text="Typed offline")).to_have_count(1)
        self.check("a message typed while offline survives two page reloads and is delivered once")

        # Both screens converge on the server's history: same seqs, each once, nothing lost.
        conv = agent.evaluate("() => [...window.scConsole.conversations.keys()][0]")
        req = urllib.request.Request(f"{self.base}/api/v1/conversations/{conv}/messages?limit=500",
                                     headers={"Authorization": "Bearer " + token("alice", "agent")})
        stored = json.load(urllib.request.urlopen(req, timeout=10))["messages"]
        # events are shown in the viewer's language: compared by their names
        want = [(m["seq"], m["body"] if m["kind"] != "event" else "event:" + m["event"]["name"]) for m in stored]
        seqs = [s for s, _ in want]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        bodies = [b for _, b in want]
        for text in ("Where is my order?", "Sent just before the crash", "Sent while the server was down",
                     "Agent reply while down", "No, that's all"):
            assert bodies.count(text) == 1, (text, bodies)
        cust_seen = [(m["seq"], m["body"]) for m in self.widget_messages(cust)]
        agent_seen = [(m["seq"], m["body"]) for m in self.console_messages(agent)]
        assert cust_seen == want, {"customer": cust_seen, "server": want}
        assert agent_seen == want, {"agent": agent_seen, "server": want}
        self.check(f"both screens show exactly the server's {len(want)} messages in seq order, each once")
        assert not failed, failed
        self.check("the console logs no failed request (a customer without a profile is not a 404)")

        # History paging in the console, read receipts kept, screenshots.
        self.shot(cust, "widget.png")
        self.shot(agent, "console.png")
        self.axe(agent, "the console with a conversation open (en, 1100 px)")
        agent.set_viewport_size({"width": 390, "height": 800})
        expect(agent.locator("#composer-input")).to_be_visible()
        self.axe(agent, "the console with a conversation open (en, 390 px)")
        agent.screenshot(path=os.path.join(self.artifacts, "console-mobile.png"))
        agent.set_viewport_size({"width": 1100, "height": 720})
        mobile = cust_ctx.new_page()
        mobile.set_viewport_size({"width": 390, "height": 720})
        mobile.goto(self.base + "/")
        mobile.locator("#supportchat-widget .launcher").click()
        expect(mobile.locator("#supportchat-widget li.sc-msg", has_text="No, that's all")).to_have_count(1)
        width = mobile.evaluate("() => document.querySelector('#supportchat-widget').shadowRoot.querySelector('.panel').getBoundingClientRect().width")
        assert width == 390, width
        self.shot(mobile, "widget-mobile.png")
        self.check("at a 390 px mobile width the widget fills the screen and shows the same conversation")
        self.axe(mobile, "the open widget (en, 390 px)")
        if workflow_enabled():
            self.transfer_close_rate(browser, cust, agent, errors)
        self.chinese(browser, errors)
        self.arabic(browser, errors)
        assert not errors, errors
        self.check("no JavaScript errors on any page")

    def transfer_close_rate(self, browser: Any, cust: Any, alice: Any, errors: list[str]) -> None:
        """Issue 5's workflow through the UI: Alice transfers to Bob with an
        internal note, Bob answers and closes, the customer rates."""
        expect = self.expect
        bob_ctx = browser.new_context(viewport={"width": 1100, "height": 720}, locale="en-US", bypass_csp=True)
        bob = bob_ctx.new_page()
        bob.on("pageerror", lambda e: errors.append(f"bob: {e}"))
        self.log_frames(bob, "bob")
        bob.goto(self.base + "/console")
        bob.locator("#token-login summary").click()
        bob.locator("#login-token").fill(token("bob", "agent", name="Bob"))
        bob.locator("#token-submit").click()
        expect(bob.locator("#conn")).to_have_text("Connected")
        alice.locator("#transfer-btn").click()
        expect(alice.locator("#transfer-to option[value='agent:bob']")).to_contain_text("Bob — Offline")
        alice.locator("#transfer-to").select_option("agent:bob")
        expect(alice.locator("#transfer-warn")).to_contain_text("Bob is offline")
        self.check("transfer picks an agent from a list with status and load, and warns that Bob is offline")
        alice.locator("#transfer-note").fill("VIP customer, be nice")
        alice.locator("#transfer-go").click()
        expect(alice.locator("#conv-status")).to_have_attribute("data-status", "transferred")
        mine = bob.locator("#mine li.mine-item")
        expect(mine).to_have_count(1)
        expect(bob.locator("#mine li.mine-item .unread")).to_have_count(0)  # unread counts start at the transfer
        # a message Bob has not seen yet: the title blinks until he opens the conversation
        self.customer_send(cust, "Is anyone there?")
        expect(bob.locator("html")).to_have_attribute("data-blink", "on")
        bob.wait_for_function("() => /New message/.test(document.title)", timeout=WAIT)
        mine.click()
        expect(bob.locator("html")).not_to_have_attribute("data-blink", "on")  # stopped, not merely between blinks
        expect(bob).to_have_title("Agent console · supportchat")
        self.check("the title blinks for a message in a conversation not on screen and stops once it is opened")
        expect(bob.locator("#messages li.sc-note")).to_contain_text("VIP customer, be nice")
        expect(bob.locator("#messages li.sc-msg", has_text="No, that's all")).to_have_count(1)
        expect(cust.locator("#supportchat-widget li.sc-event[data-event=transferred]")).to_have_count(1)
        expect(cust.locator("#supportchat-widget", has_text="VIP customer")).to_have_count(0)
        self.check("transfer with an internal note: the new agent gets the conversation and the note, the customer never sees the note")
        # a note at any time, with an @mention of someone no longer in the conversation
        bob.locator("#note-mode").check()
        self.agent_send(bob, "@alice did you promise a refund?")
        expect(bob.locator("#messages li.sc-note", has_text="did you promise a refund")).to_have_count(1)
        expect(alice.locator("#mention-note")).to_contain_text("Bob mentioned you")
        bob.reload()
        bob.locator("#mine li.mine-item").first.click()
        expect(bob.locator("#messages li.sc-note")).to_have_count(2)  # both notes come back with sync, in place
        expect(cust.locator("#supportchat-widget", has_text="refund")).to_have_count(0)
        self.check("an internal note with an @mention reaches the mentioned agent, survives a reload (sync), never the customer")
        self.agent_send(bob, "Hi, Bob here. All sorted!")
        expect(cust.locator("#supportchat-widget li.sc-other", has_text="Bob here")).to_have_count(1)
        bob.locator("#close-btn").click()
        expect(bob.locator("#conv-status")).to_have_attribute("data-status", "closed")
        expect(cust.locator("#supportchat-widget li.sc-event[data-event=closed]")).to_have_count(1)
        stars = cust.locator("#supportchat-widget .stars [role=radio]")
        expect(stars).to_have_count(5)
        stars.nth(3).focus()
        cust.keyboard.press("ArrowRight")
        cust.keyboard.press("Enter")
        expect(cust.locator("#supportchat-widget .rating")).to_contain_text("Thank you for your feedback!")
        expect(cust.locator("#supportchat-widget .restart")).to_be_visible()
        expect(cust.locator("#supportchat-widget li.sc-event[data-event=closed]")).to_be_in_viewport()
        expect(cust.locator("#supportchat-widget .rating textarea.comment")).to_have_count(1)
        self.check("the agent closes; the customer rates 5 stars from the keyboard")
        self.shot(bob, "console-transfer.png", readme=False)

    def api(self, method: str, path: str, bearer: str, body: Any = None) -> tuple[int, Any]:
        """One REST call; (status, JSON body)."""
        req = urllib.request.Request(f"{self.base}/api/v1{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + bearer, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def canned(self, agent: Any, cust: Any) -> None:
        """Issue 15 item 3 in the console: no built-in replies; the team's from
        the server, live; /th offers /thanks before /hi (whose text has "th");
        the agent saves a reply of their own and uses it."""
        expect = self.expect
        box = agent.locator("#composer-input")
        box.fill("/")
        expect(agent.locator("#canned")).to_be_hidden()  # nothing hard-coded
        admin = token("boss", "admin", name="Boss")
        for shortcut, text in (("hi", "Hello! Thanks for reaching out, I'm looking into it now."),
                               ("order", "Could you share your order number, please?"),
                               ("thanks", "Thank you! Is there anything else I can help you with?")):
            code, _ = self.api("POST", "/canned", admin, {"scope": "team", "team": "", "shortcut": shortcut, "body": text})
            assert code == 201, code
        box.fill("/th")
        options = agent.locator("#canned li")
        expect(options).to_have_count(2)
        expect(options.first).to_contain_text("/thanks")
        expect(options.nth(1)).to_contain_text("/hi")
        box.fill("/ord")
        expect(options).to_have_count(1)
        box.press("Enter")
        expect(box).to_have_value("Could you share your order number, please?")
        box.press("Enter")
        expect(cust.locator("#supportchat-widget li.sc-other", has_text="Could you share your order number")).to_have_count(1)
        self.check("canned replies come from the server and appear live when an admin adds them; "
                   "/th ranks /thanks (shortcut prefix) before /hi (text match); /ord inserts and sends")
        box.fill("Returns are free within 30 days.")
        agent.locator("#save-canned").click()
        agent.locator("#save-shortcut").fill("returns")
        agent.locator("#save-go").click()
        expect(agent.locator("#canned-note")).to_contain_text("/returns")
        box.fill("/ret")
        expect(options.first).to_contain_text("/returns")
        expect(options.first).to_contain_text("mine")
        box.press("Tab")
        expect(box).to_have_value("Returns are free within 30 days.")
        box.fill("")
        code, listing = self.api("GET", "/canned", token("alice", "agent"))
        assert [c["shortcut"] for c in listing["canned"] if c["scope"] == "personal"] == ["returns"], listing
        self.check("an agent saves the composer's text as a personal canned reply and finds it by its shortcut")

    def chinese(self, browser: Any, errors: list[str]) -> None:
        """A visitor and an agent whose browsers ask for zh-CN: the widget and
        the console in Simplified Chinese end to end, the bot in Chinese
        (its quick replies send Chinese), events in Chinese, the agent's name."""
        expect = self.expect
        cust_ctx = browser.new_context(viewport={"width": 1000, "height": 720}, locale="zh-CN", bypass_csp=True)
        agent_ctx = browser.new_context(viewport={"width": 1100, "height": 720}, locale="zh-CN", bypass_csp=True)
        cust, agent = cust_ctx.new_page(), agent_ctx.new_page()
        for who, page in (("customer-zh", cust), ("agent-zh", agent)):
            page.on("pageerror", lambda e, who=who: errors.append(f"{who}: {e}"))
            self.log_frames(page, who)
        w = "#supportchat-widget"
        cust.goto(self.base + "/")
        launcher = cust.locator(w + " .launcher")
        expect(launcher).to_have_attribute("aria-label", "打开在线客服")
        self.axe(cust, "the demo page, widget closed (zh-CN)")
        launcher.click()
        expect(cust.locator(w + " textarea.input")).to_have_attribute("placeholder", "请输入消息…")
        expect(cust.locator(w + " .conn")).to_have_text("在线")
        if bot_enabled():
            expect(cust.locator(w + " .intro")).to_contain_text("您好！我是智能客服")
            expect(cust.locator(w + " .intro-quick .sc-chip", has_text="转人工")).to_be_visible()
        if workflow_enabled():
            expect(cust.locator(w + " .expect")).to_contain_text("当前没有客服在线")
        self.customer_send(cust, "你好")
        expect(cust.locator(w + " li.sc-own", has_text="你好").locator(".sc-who")).to_have_text("我")
        if bot_enabled():
            expect(cust.locator(w + " li.sc-role-bot").first).to_contain_text("您好！我是智能客服")
            expect(cust.locator(w + ' li.sc-role-bot[data-cid^="bot:m"]').first).to_be_visible()  # the answer, with the last buttons
            chip = cust.locator(w + " .sc-chip", has_text="转人工")
            expect(chip.first).to_be_visible()
            chip.first.click()
            expect(cust.locator(w + " li.sc-own", has_text="人工")).to_have_attribute("data-status", re.compile("sent|seen"))
            expect(cust.locator(w + " li.sc-event[data-event=handoff]")).to_have_text("正在为您转接人工客服")
            self.check("zh-CN: the bot greets in Chinese; its quick reply shows and sends Chinese; the handoff reads in Chinese")
        if workflow_enabled():
            expect(cust.locator(w + " li.sc-event[data-event=queued]")).to_have_text("正在等待客服接入")
            # nobody online: the offline email form, in Chinese
            expect(cust.locator(w + " .email p").first).to_have_text("留下您的邮箱地址，我们也会把回复发送到该邮箱。")
            expect(cust.locator(w + " .email label.check")).to_contain_text("会话结束时")
        self.axe(cust, "the open widget with a conversation (zh-CN)")

        agent.goto(self.base + "/console")
        expect(agent.locator("#login-title")).to_have_text("客服工作台")
        expect(agent.locator("html")).to_have_attribute("lang", "zh-Hans")
        self.axe(agent, "the console's sign-in page (zh-CN)")
        agent.locator("#token-login summary").click()
        agent.locator("#login-token").fill(token("chen", "agent", name="陈静"))
        agent.locator("#token-submit").click()
        expect(agent.locator("#conn")).to_have_text("已连接")
        expect(agent.locator("#go-online")).to_be_visible()
        expect(agent.locator("#go-online")).to_contain_text("您当前为离线状态")
        item = agent.locator("#queue li.queue-item", has_text="访客")
        if bot_enabled():
            expect(item.locator(".preview")).to_have_text("你好")
            # the widget sent the browser's language (zh-CN) with "start"
            expect(item.locator(".lang")).to_have_text("中文（中国）")
        expect(item).to_have_count(1)
        expect(item).to_contain_text("已等待")
        expect(item.locator("button.accept")).to_have_text("接入")
        item.locator("button.accept").click()
        expect(agent.locator("#messages li.sc-msg", has_text="你好")).to_have_count(1)
        expect(cust.locator(w + " li.sc-event[data-event=joined]")).to_have_text("陈静 已加入会话")
        self.agent_send(agent, "您好，我来帮您查一下。请看 https://example.com/zh")
        answer = cust.locator(w + " li.sc-other", has_text="我来帮您查一下")
        expect(answer.locator(".sc-who")).to_have_text("陈静")
        expect(answer.locator("a")).to_have_attribute("href", "https://example.com/zh")
        expect(agent.locator("#messages li.sc-own", has_text="我来帮您查一下")).to_have_attribute("data-status", "seen")
        expect(agent.locator("#messages li.sc-own", has_text="我来帮您查一下").locator(".sc-status")).to_have_text("已读")
        self.check("zh-CN: the console in Chinese (sign-in, connection, queue with a visitor label, first message, "
                   "language and waiting time, accept); the visitor sees 陈静's name and join in Chinese; read receipt")
        agent.locator("#go-online-btn").click()
        expect(agent.locator("#go-online")).to_be_hidden()
        expect(agent.locator("#status-dot")).to_have_attribute("data-status", "online")
        expect(agent.locator("#agent-status")).to_have_value("online")
        expect(agent.locator("#conn")).to_have_text("已连接")
        self.check("after sign-in an offline agent is prompted to go online; availability and connection are two indicators")
        self.shot(cust, "widget-zh.png")
        self.shot(agent, "console-zh.png")
        self.axe(agent, "the console with a conversation open (zh-CN, 1100 px)")
        agent.set_viewport_size({"width": 390, "height": 800})
        self.axe(agent, "the console with a conversation open (zh-CN, 390 px)")
        cust.set_viewport_size({"width": 390, "height": 800})
        self.axe(cust, "the open widget (zh-CN, 390 px)")
        cust_ctx.close()
        agent_ctx.close()

    def arabic(self, browser: Any, errors: list[str]) -> None:
        """An Arabic browser: the widget lays out right to left, in Arabic;
        a message body takes its own direction (dir=auto)."""
        expect = self.expect
        ctx = browser.new_context(viewport={"width": 1000, "height": 720}, locale="ar", bypass_csp=True)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(f"customer-ar: {e}"))
        w = "#supportchat-widget"
        page.goto(self.base + "/")
        page.locator(w + " .launcher").click()
        expect(page.locator(w + " .send")).to_have_text("إرسال")
        self.customer_send(page, "مرحبا، أين طلبي؟")
        body = page.locator(w + " li.sc-own .sc-body", has_text="مرحبا")
        expect(body).to_have_count(1)
        direction = page.evaluate("""() => { const r = document.querySelector('#supportchat-widget').shadowRoot;
            return [getComputedStyle(r.querySelector('.panel')).direction,
                    getComputedStyle(r.querySelector('li.sc-own .sc-body')).direction]; }""")
        assert direction == ["rtl", "rtl"], direction
        self.axe(page, "the open widget (ar, right to left)")
        ctx.set_offline(True)  # the browser's "offline" event: the header says so at once, not after a heartbeat
        expect(page.locator(w + " .conn")).to_have_text("غير متصل، جارٍ إعادة الاتصال…", timeout=5000)
        ctx.set_offline(False)
        expect(page.locator(w + " .conn")).to_have_text("متصل")
        self.check("the network going away shows in the header within seconds, and it reconnects when it is back")
        self.shot(page, "widget-ar.png", readme=False)
        self.check("ar: the widget is in Arabic and right to left; message bodies take their own direction")
        ctx.close()


def run_scenario(make: Any) -> int:
    """Run ``make(artifacts, shots).run()`` for the command line
    (``scenario.py ARTIFACTS [SHOTS]``) and print its checks as JSON."""
    artifacts = os.path.abspath(sys.argv[1])
    shots = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None
    os.makedirs(artifacts, exist_ok=True)
    scenario = make(artifacts, shots)
    result: dict[str, Any] = {"ok": False, "checks": scenario.checks}
    try:
        scenario.run()
        result["ok"] = True
    except BaseException as e:  # report everything as JSON
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(run_scenario(Scenario))
