"""Authentication failures in the web UI, in headless Chromium (Debian's
/usr/bin/chromium through Playwright for Python) against a real
``twistd supportchat run`` process: the console and the widget say that the
token was refused and offer to sign in again instead of reconnecting
forever; a refresh token or a new visitor token renews silently first; a
server that is merely away is still reconnected to. Prints one JSON object
on stdout: ``{"ok": bool, "checks": [...], "error": ...}``. Run by
tests/test_browser.py.

    python tests/browser/auth_scenario.py ARTIFACT_DIR [SCREENSHOT_DIR]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jwt  # noqa: E402

from tests.browser.ui_scenario import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, WAIT, Server, axe_check, run_scenario, workflow_enabled)
from tests.support import free_port, token  # noqa: E402

PASSWORD = "correct horse battery"
EN = {
    "expired": "Your session has expired. Please sign in again.",
    "refused": "The server no longer accepts your sign-in. Please sign in again.",
    "disabled": "Your account has been disabled or your sign-in was revoked. Ask an administrator, then sign in again.",
    "widget": "Chat is unavailable: this page's chat sign-in was not accepted. Reload the page, or try again later.",
}
ZH_EXPIRED = "您的登录已过期，请重新登录。"
# The client's state, read through the page (window.scConsole is the console's client).
STOPPED = """() => { const c = window.scConsole;
  return { state: c.state, stopped: c._stopped, timer: !!c._timers.reconnect, failure: c.authFailure }; }"""


class ShopSite:
    """An integrator's page on its own origin (another local port): the
    widget embedded cross-origin, as on a real shop."""

    def __init__(self) -> None:
        import http.server
        import threading

        site = self
        self.html = ""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.html.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def forged(user_id: str, role: str) -> str:
    """A well-formed, unexpired token signed with a secret the server does not know."""
    return jwt.encode({"sub": user_id, "role": role, "iat": int(time.time()), "exp": int(time.time()) + 3600},
                      "not-the-server-secret-" + "z" * 30, algorithm="HS256")


class Scenario:
    def __init__(self, artifacts: str, shots: str | None) -> None:
        self.artifacts = artifacts
        self.shots = shots
        self.checks: list[str] = []
        self.errors: list[str] = []

    def check(self, what: str) -> None:
        self.checks.append(what)

    def api(self, method: str, path: str, bearer: str | None = None, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.base}/api/v1{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": "Bearer " + bearer} if bearer else {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def run(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        self.expect = expect
        expect.set_options(timeout=WAIT)
        # An integrator's site on another origin, allowed to embed the widget.
        self.shop = ShopSite()
        self.server = Server(tempfile.mkdtemp(prefix="sc-auth-"), free_port(), os.path.join(self.artifacts, "server-auth.log"),
                             env={"SUPPORTCHAT_WEBSOCKET_ALLOWED_ORIGINS": self.shop.origin})
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.port}"
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    self.console_expired(browser)
                    self.console_forged(browser)
                    if workflow_enabled():
                        self.console_refresh_and_disable(browser)
                    self.widget(browser)
                    self.console_restart(browser)
                finally:
                    browser.close()
        finally:
            self.server.stop()
            self.shop.stop()
        assert not self.errors, self.errors
        self.check("no JavaScript errors on any page")

    # -- helpers ---------------------------------------------------------
    def page(self, browser: Any, locale: str = "en-US") -> tuple[Any, Any, list[str]]:
        """A fresh browser context and page; the list collects its WebSocket URLs."""
        ctx = browser.new_context(viewport={"width": 1100, "height": 720}, locale=locale, bypass_csp=True)
        page = ctx.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        return ctx, page, sockets

    def console_with(self, page: Any, saved: dict[str, str]) -> None:
        """Open the console with these localStorage entries (what an earlier visit left)."""
        page.goto(self.base + "/console")
        page.evaluate("(kv) => { localStorage.clear(); for (const [k, v] of Object.entries(kv)) localStorage.setItem(k, v); }",
                      saved)
        page.reload()

    def shot(self, page: Any, name: str, readme: bool) -> None:
        page.screenshot(path=os.path.join(self.artifacts, name))
        if self.shots and readme:
            page.screenshot(path=os.path.join(self.shots, name))

    def axe(self, page: Any, what: str) -> None:
        """No axe-core violation at all on the page as it is (axe-core from tests/browser/node_modules)."""
        axe_check(page, what, {}, strict=True)
        self.check(f"axe-core finds no violations: {what}")

    def assert_stopped(self, page: Any, reason: str) -> None:
        """The client gave up: stopped, no reconnect timer pending, the reason kept."""
        state = page.evaluate(STOPPED)
        assert state["stopped"] and not state["timer"], state
        assert state["failure"] and state["failure"]["reason"] == reason, state

    # -- the scenarios ---------------------------------------------------
    def console_expired(self, browser: Any) -> None:
        """(a) An expired token and no refresh token: the sign-in form says so."""
        expect = self.expect
        expired = token("alice", "agent", ttl=60, now=time.time() - 3600, name="Alice")
        for locale, text, shot in (("en-US", EN["expired"], "console-signin-again.png"),
                                   ("zh-CN", ZH_EXPIRED, "console-signin-again-zh.png")):
            ctx, page, sockets = self.page(browser, locale)
            self.console_with(page, {"sc-console:token": expired})
            notice = page.locator("#login-notice")
            expect(notice).to_have_text(text)
            expect(notice).to_have_attribute("role", "alert")
            expect(page.locator("#login-user")).to_be_visible()
            expect(page.locator("#app")).to_be_hidden()
            self.assert_stopped(page, "expired")
            assert sockets == [], sockets  # an expired token is never offered to the server
            assert page.evaluate("() => localStorage.getItem('sc-console:token')") is None
            self.shot(page, shot, readme=locale == "en-US")
            self.axe(page, f"console sign-in notice ({locale})")
            ctx.close()
        self.check("console with an expired token: the sign-in form says the session expired "
                   "(English and Chinese), no WebSocket attempt, no reconnecting")

    def console_forged(self, browser: Any) -> None:
        """(b) A token signed with a wrong secret: refused at the handshake
        (the browser sees 1006), /api/v1/me says 401, the form says so once;
        signing in again with a good token works."""
        expect = self.expect
        ctx, page, sockets = self.page(browser)
        page.goto(self.base + "/console")
        page.locator("#token-login summary").click()
        page.locator("#login-token").fill(forged("alice", "agent"))
        page.locator("#token-submit").click()
        expect(page.locator("#login-notice")).to_have_text(EN["refused"])
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#token-login")).to_have_attribute("open", "")
        self.assert_stopped(page, "signature")
        assert len(sockets) == 1, sockets  # one refused attempt, then no more
        self.check("console with a token signed by a wrong secret: one refused connect, then the sign-in form "
                   "with the reason, no reconnecting")
        page.locator("#login-token").fill(token("alice", "agent", name="Alice"))
        page.locator("#token-submit").click()
        expect(page.locator("#conn")).to_have_text("Connected")
        expect(page.locator("#login-notice")).to_be_hidden()
        self.check("signing in again with a good token connects")
        self.axe(page, "console, signed in again")
        ctx.close()

    def console_refresh_and_disable(self, browser: Any) -> None:
        """A refresh token renews an expired access token silently; (c) an
        agent disabled by an admin while connected sees why, at once."""
        expect = self.expect
        admin = token("boss", "admin", name="Boss")
        code, body = self.api("POST", "/agents", admin, {"login": "ann", "name": "Ann", "password": PASSWORD})
        assert code == 201, (code, body)
        code, tokens = self.api("POST", "/login", None, {"login": "ann", "password": PASSWORD})
        assert code == 200, (code, tokens)

        ctx, page, sockets = self.page(browser)
        expired = token("ann", "agent", ttl=60, now=time.time() - 3600, name="Ann")
        self.console_with(page, {"sc-console:token": expired, "sc-console:refresh": tokens["refresh_token"]})
        expect(page.locator("#conn")).to_have_text("Connected")
        expect(page.locator("#login")).to_be_hidden()
        saved = page.evaluate("() => localStorage.getItem('sc-console:token')")
        assert saved != expired and jwt.decode(saved, options={"verify_signature": False})["sub"] == "ann"
        self.check("an expired access token with a refresh token: the console renews it silently and connects")
        ctx.close()

        ctx, page, sockets = self.page(browser)
        page.goto(self.base + "/console")
        page.locator("#login-user").fill("ann")
        page.locator("#login-password").fill(PASSWORD)
        page.locator("#login-submit").click()
        expect(page.locator("#conn")).to_have_text("Connected")
        code, body = self.api("PATCH", "/agents/ann", admin, {"disabled": True})
        assert code == 200, (code, body)
        expect(page.locator("#login-notice")).to_have_text(EN["disabled"])
        expect(page.locator("#login-user")).to_be_visible()
        expect(page.locator("#token-login")).not_to_have_attribute("open", "")  # signed in with a password
        self.assert_stopped(page, "account_disabled")
        assert page.evaluate("() => localStorage.getItem('sc-console:refresh')") is None
        self.shot(page, "console-account-disabled.png", readme=False)
        self.check("an agent disabled by an admin while connected: the console says the account is disabled "
                   "and shows the sign-in form (the refresh token is refused too), no reconnecting")
        self.api("PATCH", "/agents/ann", admin, {"disabled": False})
        ctx.close()

    def widget(self, browser: Any) -> None:
        """The widget: a refused anonymous visitor token is replaced silently;
        an integrator's refused token gets a clear message."""
        expect = self.expect
        ctx, page, sockets = self.page(browser)
        key = f"sc:visitor:{self.base}"
        page.goto(self.base + "/")
        page.evaluate("([k, v]) => localStorage.setItem(k, v)", [key, json.dumps({"token": forged("v-old", "customer")})])
        page.reload()
        page.locator("#supportchat-widget .launcher").click()
        expect(page.locator("#supportchat-widget .conn")).to_have_text("Online")
        fresh = json.loads(page.evaluate("(k) => localStorage.getItem(k)", key))["token"]
        assert jwt.decode(fresh, options={"verify_signature": False})["sub"] != "v-old"
        self.check("widget with a refused anonymous visitor token: a new visitor token, connected, no message")
        ctx.close()

        ctx, page, sockets = self.page(browser)
        self.shop.html = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Shop</title></head><body>"
                          "<main><h1>Shop</h1></main>"
                          f"<script src='{self.base}/widget.js' data-token='{forged('integrated', 'customer')}' "
                          "data-title='Shop support'></script></body></html>")
        page.goto(self.shop.origin + "/")
        page.locator("#supportchat-widget .launcher").click()
        box = page.locator("#supportchat-widget .auth")
        expect(box).to_contain_text(EN["widget"])
        expect(box).to_have_attribute("role", "alert")
        expect(page.locator("#supportchat-widget form")).to_be_hidden()
        expect(page.locator("#supportchat-widget .conn")).to_have_text("Not connected")
        assert len(sockets) == 1, sockets
        self.shot(page, "widget-auth-refused.png", readme=False)
        self.axe(page, "widget refused-token message")
        page.evaluate("(t) => window.SupportChat.setToken(t)", token("integrated", "customer"))
        expect(page.locator("#supportchat-widget .conn")).to_have_text("Online")
        expect(box).to_be_hidden()
        self.axe(page, "widget, connected")
        self.check("widget with an integrator's refused token: a clear message, no reconnecting; "
                   "SupportChat.setToken with a good token connects")
        ctx.close()

    def console_restart(self, browser: Any) -> None:
        """(d) A server that is away is no authentication failure: the console
        keeps reconnecting while it is down and connects when it is back."""
        expect = self.expect
        ctx, page, sockets = self.page(browser)
        self.console_with(page, {"sc-console:token": token("alice", "agent", name="Alice")})
        expect(page.locator("#conn")).to_have_text("Connected")
        self.server.kill()
        expect(page.locator("#conn")).to_have_text("Offline, reconnecting…")
        page.wait_for_function("(n) => window.scConsole._attempt >= n", arg=2, timeout=WAIT)  # failed connects, probed
        self.server.start()
        expect(page.locator("#conn")).to_have_text("Connected", timeout=40_000)
        expect(page.locator("#login-notice")).to_be_hidden()
        self.check("server killed and restarted: the console reconnects, no sign-in message")
        ctx.close()


if __name__ == "__main__":
    sys.exit(run_scenario(Scenario))
