"""docs/security.md stays true: every option it names exists, and where it
gives a default in parentheses right after the option, that is the code's."""

from __future__ import annotations

import re

from twisted.python.filepath import FilePath
from twisted.trial import unittest

from supportchat.config.model import SECTIONS, Config

DOC = FilePath(__file__).parent().parent().child("docs").child("security.md")
OPTION = re.compile(r"`(\w+)\.(\w+)`")
WITH_DEFAULT = re.compile(r"`(\w+)\.(\w+)` \((\d+(?:\.\d+)?)(?: (days|min|KiB|MiB))?")
UNITS = {"": 1, "days": 86400, "min": 60, "KiB": 1024, "MiB": 1024 * 1024}


class SecurityDocTests(unittest.TestCase):
    def setUp(self) -> None:
        self.text = DOC.getContent().decode("utf-8")
        self.config = Config()

    def test_named_options_exist(self) -> None:
        """Each `section.option` in security.md is a real option (a renamed
        option cannot leave the security guide behind)."""
        named = {(s, o) for s, o in OPTION.findall(self.text) if s in SECTIONS}
        self.assertTrue(named)
        missing = [f"{s}.{o}" for s, o in sorted(named) if not hasattr(getattr(self.config, s), o)]
        self.assertEqual(missing, [])

    def test_stated_defaults_are_the_code_defaults(self) -> None:
        """`auth.login_backoff_max` (300 s) and the like: the number is the
        option's default (days, minutes, KiB and MiB converted)."""
        found = WITH_DEFAULT.findall(self.text)
        self.assertGreaterEqual(len(found), 8)
        for section, option, number, unit in found:
            default = getattr(getattr(self.config, section), option)
            stated = float(number) * UNITS[unit]
            self.assertEqual(stated, float(default), f"{section}.{option}")
