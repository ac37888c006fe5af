"""Fuzzy matching of customer questions against the knowledge's examples.

Choice: rapidfuzz (C++, MIT, well kept) rather than TF-IDF. Support
questions are short; what breaks matching is typos, word order, extra
words and Chinese without spaces, which edit-distance ratios handle with no
training step and no tokenizer. Every text is normalised first (NFKC, case
folded, punctuation and symbols turned into spaces, filler words dropped);
Chinese stays a run of characters, so rapidfuzz compares it character by
character (no word segmentation needed). The score of an entry is the best
score (0-100, see :func:`score`) over its example questions; below the threshold the
bot does not claim to know. Measured accuracy: tests/test_bot.py.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from rapidfuzz import fuzz

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACE_AROUND_CJK = re.compile(r"(?<=[\u3400-\u9fff])\s+|\s+(?=[\u3400-\u9fff])")
# Words and particles that carry no intent (both languages).
_FILLER_EN = {"please", "pls", "hi", "hello", "hey", "can", "could", "you", "tell", "me", "i", "a", "the", "is", "my",
              "do", "does", "what", "whats", "to", "of", "and", "want", "would", "like"}
_FILLER_ZH = ("请问", "你好", "您好", "一下", "麻烦", "吗", "呢", "啊", "呀", "吧", "的", "了", "我想", "想")


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def language(text: str) -> str:
    """"zh" when the message contains Chinese characters, else "en"."""
    return "zh" if has_cjk(text) else "en"


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    text = " ".join(text.split())
    return _SPACE_AROUND_CJK.sub("", text)


def _strip_filler(norm: str) -> str:
    words = [w for w in norm.split() if w not in _FILLER_EN]
    out = " ".join(words) if words else norm
    if has_cjk(out):
        stripped = out
        for f in _FILLER_ZH:
            stripped = stripped.replace(f, "")
        if len(stripped) >= 2:
            out = stripped
    return out


def score(query: str, example: str) -> float:
    """Similarity 0-100 of two normalised texts.

    English: the best of plain, word-order-free (token sort) and subset
    (token set, for two words or more) ratios, and a partial ratio weighed
    by relative length (a short question inside a long example counts less).
    Chinese: plain ratio, ratio of the sorted characters (word order is
    free in questions such as 退款怎么弄 / 怎么退款) and a length-weighed
    partial ratio. Texts in different scripts do not match."""
    if not query or not example or has_cjk(query) != has_cjk(example):
        return 0.0
    a, b = _strip_filler(query), _strip_filler(example)
    short, long_ = sorted((a, b), key=len)
    if has_cjk(a):
        s = max(fuzz.ratio(a, b), 0.95 * fuzz.ratio("".join(sorted(a)), "".join(sorted(b))))
        if len(short) >= 2:
            s = max(s, fuzz.partial_ratio(short, long_) * (0.8 + 0.2 * len(short) / len(long_)))
        return float(s)
    s = max(fuzz.ratio(a, b), fuzz.token_sort_ratio(a, b), fuzz.ratio(query, example))
    if min(len(a.split()), len(b.split())) >= 2:
        s = max(s, 0.9 * fuzz.token_set_ratio(a, b))
    if len(short) >= 4:
        s = max(s, fuzz.partial_ratio(short, long_) * (0.75 + 0.25 * len(short) / len(long_)))
    return float(s)


@dataclass(frozen=True)
class Match:
    key: str
    score: float


class Matcher:
    """Finds the best entry for a question; keys are entry ids."""

    def __init__(self, entries: dict[str, tuple[str, ...]], threshold: float) -> None:
        self.threshold = threshold
        self._examples = [(key, normalize(q)) for key, qs in entries.items() for q in qs]

    def best(self, question: str) -> Match | None:
        """The best-scoring entry, or None when nothing reaches the threshold."""
        q = normalize(question)
        top: Match | None = None
        for key, example in self._examples:
            s = score(q, example)
            if top is None or s > top.score:
                top = Match(key, s)
        if top is None or top.score < self.threshold:
            return None
        return top
