"""Attachments in the web UI, in headless Chromium (Debian's
/usr/bin/chromium through Playwright for Python) against a real
``twistd supportchat run`` process: a visitor pastes a screenshot into the
widget, the agent's console shows its preview and opens it; the agent
sends a PDF with the attach button and the visitor sees its file card; a
refused file is explained in the visitor's language (English, Chinese).
Prints one JSON object on stdout: ``{"ok": bool, "checks": [...],
"error": ...}``. Run by tests/test_browser.py.

    python tests/browser/attachments_scenario.py ARTIFACT_DIR [SCREENSHOT_DIR]
"""

from __future__ import annotations

import base64
import os
import re
import sys
import tempfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.attachment_files import ELF, PDF  # noqa: E402
from tests.browser.ui_scenario import CHROMIUM, CHROMIUM_ARGS, WAIT, Server, run_scenario  # noqa: E402
from tests.support import free_port, token  # noqa: E402

# Paste a PNG (base64) into the widget's text box, as a browser does for a screenshot.
PASTE = """(b64) => {
  const root = document.querySelector('#supportchat-widget').shadowRoot;
  const box = root.querySelector('textarea.input');
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], 'screenshot.png', { type: 'image/png' }));
  box.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
}"""
# Drop a small text file on the widget's panel (drag and drop).
DROP = """(name) => {
  const panel = document.querySelector('#supportchat-widget').shadowRoot.querySelector('.panel');
  const data = new DataTransfer();
  data.items.add(new File(['order 1234, the mug handle\\n'], name, { type: 'text/plain' }));
  panel.dispatchEvent(new DragEvent('dragover', { dataTransfer: data, bubbles: true, cancelable: true }));
  panel.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
}"""
REFUSED_EN = "This type of file cannot be sent. Images, PDF and text files can."
REFUSED_ZH = "无法发送此类型的文件。可以发送图片、PDF 和文本文件。"


class Scenario:
    def __init__(self, artifacts: str, shots: str | None) -> None:
        self.artifacts = artifacts
        self.shots = shots
        self.checks: list[str] = []
        self.errors: list[str] = []

    def check(self, what: str) -> None:
        self.checks.append(what)

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=os.path.join(self.artifacts, name))
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            page.screenshot(path=os.path.join(self.shots, name))

    def run(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        self.expect = expect
        expect.set_options(timeout=WAIT)
        self.server = Server(tempfile.mkdtemp(prefix="sc-att-"), free_port(),
                             os.path.join(self.artifacts, "server-attachments.log"),
                             env={"SUPPORTCHAT_BOT_ENABLED": "false"})
        self.server.start()
        self.base = f"http://127.0.0.1:{self.server.port}"
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    self.exchange(browser)
                    self.refused_in_chinese(browser)
                finally:
                    browser.close()
        finally:
            self.server.stop()
        assert not self.errors, self.errors
        self.check("no JavaScript errors on any page")

    def open_widget(self, page: Any) -> None:
        page.goto(self.base + "/")
        page.locator("#supportchat-widget .launcher").click()
        self.expect(page.locator("#supportchat-widget .conn")).to_have_text(re.compile("Online|在线"))

    def exchange(self, browser: Any) -> None:
        expect = self.expect
        cust_ctx = browser.new_context(viewport={"width": 1000, "height": 720}, locale="en-US")
        agent_ctx = browser.new_context(viewport={"width": 1100, "height": 720}, locale="en-US")
        cust, agent = cust_ctx.new_page(), agent_ctx.new_page()
        for who, page in (("customer", cust), ("agent", agent)):
            page.on("pageerror", lambda e, who=who: self.errors.append(f"{who}: {e}"))
        self.open_widget(cust)
        box = cust.locator("#supportchat-widget textarea.input")
        box.fill("My mug arrived broken, here is a photo")
        box.press("Enter")
        expect(cust.locator("#supportchat-widget li.sc-own").first).to_have_attribute("data-seq", re.compile(r"^\d+$"))

        agent.goto(self.base + "/console")
        agent.locator("#token-login summary").click()
        agent.locator("#token-login textarea, #login-token").first.fill(token("alice", "agent", name="Alice"))
        agent.locator("#token-submit").click()
        expect(agent.locator("#conn")).to_have_text("Connected")
        item = agent.locator("#queue li.queue-item")
        expect(item).to_have_count(1)
        item.locator("button.accept").click()
        expect(agent.locator("#messages li.sc-msg", has_text="here is a photo")).to_have_count(1)
        self.check("visitor and agent in one conversation")

        # The visitor pastes a screenshot (a real one: of the page itself).
        screenshot = cust.screenshot()
        cust.evaluate(PASTE, base64.b64encode(screenshot).decode())
        own = cust.locator("#supportchat-widget li.sc-own img.sc-thumb")
        expect(own).to_have_count(1)
        cust.wait_for_function("""() => { const img = document.querySelector('#supportchat-widget').shadowRoot
            .querySelector('li.sc-own img.sc-thumb'); return img && img.complete && img.naturalWidth > 0; }""",
                               timeout=WAIT)
        self.check("a pasted screenshot is uploaded, sent and shown to the visitor as a thumbnail")
        thumb = agent.locator("#messages li.sc-msg img.sc-thumb")
        expect(thumb).to_have_count(1)
        agent.wait_for_function("""() => { const img = document.querySelector('#messages li.sc-msg img.sc-thumb');
            return img && img.complete && img.naturalWidth > 0 && img.naturalWidth <= 320; }""", timeout=WAIT)
        expect(thumb).to_have_attribute("alt", "screenshot.png")
        self.check("the agent sees the screenshot's preview (a thumbnail of at most 320 px)")
        agent.locator("#messages a.sc-image").click()
        box = agent.locator("dialog.sc-lightbox")
        expect(box).to_be_visible()
        agent.wait_for_function("""() => { const i = document.querySelector('dialog.sc-lightbox img');
            return i && i.complete && i.naturalWidth === 1000 && i.naturalHeight === 720; }""", timeout=WAIT)
        self.shot(agent, "console-attachments-lightbox.png")
        original = box.locator("a").get_attribute("href") or ""
        assert "/api/v1/attachments/" in original and "sig=" in original, original
        r = agent.request.get(original)
        assert r.status == 200 and r.headers["content-type"] == "image/png", (r.status, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff" and "sandbox" in r.headers["content-security-policy"]
        agent.keyboard.press("Escape")
        expect(box).to_have_count(0)
        self.check("the agent opens it: the full screenshot (1000 x 720) in a lightbox, through its signed link")
        self.shot(agent, "console-attachments.png")

        # The agent sends a PDF with the attach button.
        agent.set_input_files("#attach-input", files=[{"name": "invoice.pdf", "mimeType": "application/pdf",
                                                        "buffer": PDF}])
        card = cust.locator("#supportchat-widget a.sc-file", has_text="invoice.pdf")
        expect(card).to_have_count(1)
        href = card.get_attribute("href") or ""
        assert href.startswith(self.base + "/api/v1/attachments/"), href
        r = cust.request.get(href)
        assert r.status == 200 and r.body() == PDF, r.status
        assert r.headers["content-disposition"].startswith("attachment;"), r.headers
        self.check("the agent attaches a PDF; the visitor gets a file card whose link downloads it")
        self.shot(cust, "widget-attachments.png")

        # A file dropped on the widget is sent too.
        cust.evaluate(DROP, "notes.txt")
        expect(agent.locator("#messages a.sc-file", has_text="notes.txt")).to_have_count(1)
        self.check("a text file dropped on the widget reaches the agent as a file card")

        # An upload the network loses is kept: after a reload it goes out by itself.
        cust.route("**/api/v1/attachments", lambda route: route.abort())
        cust.set_input_files("#supportchat-widget input[type=file]", files=[{
            "name": "receipt.pdf", "mimeType": "application/pdf", "buffer": PDF}])
        expect(cust.locator("#supportchat-widget .sc-upload button")).to_be_visible()  # Retry offered
        cust.unroute("**/api/v1/attachments")
        cust.reload()
        cust.locator("#supportchat-widget .launcher").click()
        expect(agent.locator("#messages a.sc-file", has_text="receipt.pdf")).to_have_count(1)
        expect(cust.locator("#supportchat-widget a.sc-file", has_text="receipt.pdf")).to_have_count(1)
        self.check("an upload cut off by the network is kept across a reload and sent after it")

        # A refused file is explained in the visitor's language.
        cust.set_input_files("#supportchat-widget input[type=file]", files=[{
            "name": "cat.png", "mimeType": "image/png", "buffer": ELF}])
        expect(cust.locator("#supportchat-widget .sc-upload")).to_contain_text(REFUSED_EN)
        self.check("an executable named cat.png is refused, and the widget says why (English)")
        cust_ctx.close()
        agent_ctx.close()

    def refused_in_chinese(self, browser: Any) -> None:
        ctx = browser.new_context(viewport={"width": 1000, "height": 720}, locale="zh-CN")
        page = ctx.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"zh visitor: {e}"))
        self.open_widget(page)
        page.set_input_files("#supportchat-widget input[type=file]", files=[{
            "name": "logo.svg", "mimeType": "image/svg+xml", "buffer": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}])
        self.expect(page.locator("#supportchat-widget .sc-upload")).to_contain_text(REFUSED_ZH)
        self.check("an SVG is refused, and the widget says why in Chinese for a zh-CN browser")
        ctx.close()


if __name__ == "__main__":
    sys.exit(run_scenario(Scenario))
