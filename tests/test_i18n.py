"""The web UI's message catalogs (supportchat/web/sc-i18n.js): English and
Simplified Chinese have the same keys, Arabic (the right-to-left proof)
covers the widget and nothing English lacks, and every key a page names is
in them; no page carries user-visible English outside the catalogs."""

from __future__ import annotations

import os
import re

from twisted.trial import unittest

from supportchat.http.web import WEB_DIR


def catalogs() -> dict[str, set[str]]:
    """language -> its keys, read from the catalog module's source."""
    with open(os.path.join(WEB_DIR, "sc-i18n.js"), encoding="utf-8") as f:
        source = f.read()
    body = source.split("export const CATALOGS = {", 1)[1].split("\n};", 1)[0]
    out: dict[str, set[str]] = {}
    for lang, block in re.findall(r'^  "?([\w-]+)"?: \{\n(.*?)^  \},', body, re.M | re.S):
        out[lang] = set(re.findall(r'^    "([\w.]+)":', block, re.M))
    return out


class CatalogTests(unittest.TestCase):
    def test_both_languages_have_every_key_the_pages_use(self) -> None:
        """en and zh-Hans have the same keys; each catalog key a page script
        names (t("auth.expired"), setText(node, "widget.auth.state")...) is in them."""
        cats = catalogs()
        self.assertEqual(set(cats), {"en", "zh-Hans", "ar"})
        self.assertTrue(cats["en"])
        self.assertEqual(cats["en"], cats["zh-Hans"])
        # every quoted "namespace.key" in a page script, namespaces being the catalogs' (auth., widget.)
        spaces = "|".join(sorted({k.split(".")[0] for k in cats["en"]}))
        used: set[str] = set()
        for name in os.listdir(WEB_DIR):
            if name.endswith(".js") and name != "sc-i18n.js":
                with open(os.path.join(WEB_DIR, name), encoding="utf-8") as f:
                    used |= set(re.findall(rf'"((?:{spaces})\.[A-Za-z][\w.]*)"', f.read()))
        self.assertTrue(used)
        self.assertLessEqual(used, cats["en"], used - cats["en"])

    def test_arabic_covers_the_widget(self) -> None:
        """The right-to-left catalog has no key English lacks, and every
        widget text and every shared message text (conn., msg.) is in it."""
        cats = catalogs()
        self.assertLessEqual(cats["ar"], cats["en"], cats["ar"] - cats["en"])
        widget = {k for k in cats["en"] if k.startswith(("widget.", "conn.", "msg.")) and not k.startswith("widget.auth.")}
        self.assertLessEqual(widget - {"msg.note"}, cats["ar"], widget - cats["ar"])

    def test_console_page_texts_come_from_the_catalogs(self) -> None:
        """Every text of console.html is marked data-i18n (so it is
        translated at load), and every data-i18n key is in the catalogs."""
        with open(os.path.join(WEB_DIR, "console.html"), encoding="utf-8") as f:
            html = f.read()
        keys = set(re.findall(r'data-i18n(?:-[a-z-]+)?="([\w.]+)"', html))
        self.assertLessEqual(keys, catalogs()["en"], keys - catalogs()["en"])
        body = re.sub(r"<code>.*?</code>", "", html.split("<body>", 1)[1], flags=re.S)
        for tag, text in re.findall(r"<(\w+)([^<>]*)>[^<>]*[A-Za-z]{3,}", body):
            self.assertIn("data-i18n=", text, f"<{tag}{text}> has a text without data-i18n")
