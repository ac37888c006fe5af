"""docs/architecture.md stays true: every module it names exists."""

from __future__ import annotations

import re

from twisted.python.filepath import FilePath
from twisted.trial import unittest

REPO = FilePath(__file__).parent().parent()
ROOTS = ("", "supportchat/")
# `path/to/module.py`, optionally `:name` (a function or class in it).
NAMED = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.(?:py|sql|toml|js|conf))(?::(\w+))?`")


def named_files(text: str) -> list[tuple[str, str | None]]:
    """The (path, name) pairs a markdown text names in backticks."""
    return [(m.group(1), m.group(2)) for m in NAMED.finditer(text)]


def missing(text: str) -> list[str]:
    """What the text names that the repository does not have: a path found
    neither from the repository's root nor from ``supportchat/``, or a
    ``path:name`` whose file does not define ``name``."""
    out = []
    for path, name in named_files(text):
        found = [REPO.preauthChild(root + path) for root in ROOTS if REPO.preauthChild(root + path).exists()]
        if not found:
            if "/" in path or path.endswith(".py"):
                out.append(path)
            continue
        if name is not None:
            source = found[0].getContent().decode("utf-8")
            if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*=", source, re.M):
                out.append(f"{path}:{name}")
    return out


class ArchitectureDocTests(unittest.SynchronousTestCase):
    def test_every_module_named_exists(self) -> None:
        """Each module path docs/architecture.md names (``handlers/router.py``,
        ``storage/persist.py:persist_batch_txn``) exists, with the function
        or class named after a colon."""
        text = REPO.child("docs").child("architecture.md").getContent().decode("utf-8")
        self.assertGreater(len(named_files(text)), 20)
        self.assertEqual(missing(text), [])

    def test_a_removed_module_is_reported(self) -> None:
        """The check itself fails on a module or function that is gone."""
        text = "`handlers/chat_gone.py` and `handlers/writer.py:no_such_function` and `handlers/writer.py:MessageWriter`"
        self.assertEqual(missing(text), ["handlers/chat_gone.py", "handlers/writer.py:no_such_function"])
