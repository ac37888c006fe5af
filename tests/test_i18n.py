"""The web UI's message catalogs (supportchat/web/sc-i18n.js): English and
Simplified Chinese have the same keys, and every key a page passes to t() or
setText() is in both."""

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
        self.assertEqual(set(cats), {"en", "zh-Hans"})
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
