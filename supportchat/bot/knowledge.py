"""The bot's knowledge (the packaged default ``supportchat/bot/knowledge.toml``,
documented copy ``conf/bot.toml``): greeting, FAQ entries with example
questions, quick replies, intents and multi-turn flows with slots.

Loaded once at start and validated; an error names the file, the entry and
the reason, like configuration errors."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

LANGS = ("en", "zh")


class KnowledgeError(Exception):
    """The knowledge file cannot be used."""


@dataclass(frozen=True)
class Text:
    """A text per language; ``get`` falls back to English, then to any."""

    by_lang: dict[str, str]

    def get(self, lang: str) -> str:
        return self.by_lang.get(lang) or self.by_lang.get("en") or next(iter(self.by_lang.values()))


@dataclass(frozen=True)
class QuickReply:
    """A button: ``label`` is shown, ``text`` sent when clicked (English, or
    the only language given); ``other`` holds the same per further language
    (``{"zh": ("转人工", "人工")}``), so a client shows the visitor's language
    and the click keeps the bot in it."""

    label: str
    text: str
    other: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "text": self.text}
        if self.other:
            out["i18n"] = {lang: {"label": label, "text": text} for lang, (label, text) in sorted(self.other.items())}
        return out


@dataclass(frozen=True)
class FaqEntry:
    id: str
    questions: tuple[str, ...]
    answer: Text
    quick_replies: tuple[QuickReply, ...] = ()


@dataclass(frozen=True)
class Slot:
    name: str
    prompt: Text
    pattern: re.Pattern[str]
    invalid: Text
    max_attempts: int = 3


@dataclass(frozen=True)
class Flow:
    id: str
    questions: tuple[str, ...]
    slots: tuple[Slot, ...]
    done: Text
    handoff: bool = False


@dataclass(frozen=True)
class Knowledge:
    greeting: Text
    fallback: Text
    handoff: Text
    after_hours: Text
    message_left: Text
    resolved: Text
    quick_replies: tuple[QuickReply, ...] = ()
    handoff_questions: tuple[str, ...] = ()
    resolved_questions: tuple[str, ...] = ()
    faq: tuple[FaqEntry, ...] = ()
    flows: tuple[Flow, ...] = field(default_factory=tuple)

    def flow(self, flow_id: str) -> Flow | None:
        for f in self.flows:
            if f.id == flow_id:
                return f
        return None

    def faq_entry(self, entry_id: str) -> FaqEntry | None:
        for e in self.faq:
            if e.id == entry_id:
                return e
        return None


# The knowledge used when [bot] knowledge is empty: shipped as package data,
# found from the installed package whatever the working directory
# (conf/bot.toml is a documented copy, kept identical by a test).
PACKAGED = "knowledge.toml"


def packaged_knowledge_text() -> bytes:
    """The packaged default knowledge file, as bytes."""
    return resources.files("supportchat.bot").joinpath(PACKAGED).read_bytes()


def load_knowledge(path: str = "") -> Knowledge:
    """Load and validate ``path`` (relative to the working directory), or
    the packaged default when ``path`` is empty."""
    source = path or f"supportchat/bot/{PACKAGED} (packaged default)"
    try:
        if path:
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = packaged_knowledge_text()
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        where = "" if os.path.isabs(source) or not path else f" (looked at {os.path.abspath(path)})"
        raise KnowledgeError(f"{source}: file not found{where}; leave [bot] knowledge empty for the packaged"
                             " default") from None
    except OSError as e:
        raise KnowledgeError(f"{source}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise KnowledgeError(f"{source}: not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeError(f"{source}: invalid TOML: {e}") from None
    return parse_knowledge(raw, source)


def parse_knowledge(raw: dict[str, Any], source: str = "<knowledge>") -> Knowledge:
    def fail(where: str, reason: str) -> KnowledgeError:
        return KnowledgeError(f"{source}: {where}: {reason}")

    def text(value: Any, where: str, default: str | None = None) -> Text:
        if value is None and default is not None:
            return Text({"en": default})
        if isinstance(value, str) and value:
            return Text({"en": value})
        if isinstance(value, dict) and value and all(isinstance(v, str) and v for v in value.values()):
            unknown = set(value) - set(LANGS)
            if unknown:
                raise fail(where, f"unknown language(s) {sorted(unknown)}; use {', '.join(LANGS)}")
            return Text(dict(value))
        raise fail(where, "expected a non-empty string or a table of texts per language")

    def questions(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(q, str) and q.strip() for q in value):
            raise fail(where, "expected a non-empty list of example questions")
        return tuple(value)

    def buttons(value: Any, where: str) -> tuple[QuickReply, ...]:
        if value is None:
            return ()
        out = []
        if not isinstance(value, list):
            raise fail(where, "expected a list of { label, text }")
        for i, b in enumerate(value):
            if not isinstance(b, dict):
                raise fail(f"{where}[{i}]", "expected { label = \"...\", text = \"...\" }")
            label = text(b.get("label"), f"{where}[{i}].label")
            said = text(b.get("text"), f"{where}[{i}].text")
            if set(label.by_lang) != set(said.by_lang):
                raise fail(f"{where}[{i}]", "label and text need the same languages")
            first = "en" if "en" in label.by_lang else next(iter(label.by_lang))
            other = {lang: (label.by_lang[lang], said.by_lang[lang]) for lang in label.by_lang if lang != first}
            out.append(QuickReply(label.by_lang[first], said.by_lang[first], other))
        return tuple(out)

    faq = []
    seen: set[str] = set()
    for i, e in enumerate(raw.get("faq", [])):
        where = f"faq[{i}]"
        entry_id = e.get("id")
        if not isinstance(entry_id, str) or not entry_id or entry_id in seen:
            raise fail(where, "needs a unique id")
        seen.add(entry_id)
        faq.append(FaqEntry(entry_id, questions(e.get("questions"), f"{where}.questions"),
                            text(e.get("answer"), f"{where}.answer"), buttons(e.get("quick_replies"), f"{where}.quick_replies")))
    flows = []
    for i, fl in enumerate(raw.get("flows", [])):
        where = f"flows[{i}]"
        flow_id = fl.get("id")
        if not isinstance(flow_id, str) or not flow_id or flow_id in seen:
            raise fail(where, "needs a unique id")
        seen.add(flow_id)
        slots = []
        for j, s in enumerate(fl.get("slots", [])):
            sw = f"{where}.slots[{j}]"
            name = s.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise fail(sw, "needs a name of lowercase letters, digits and _")
            try:
                pattern = re.compile(s.get("pattern", ".+"))
            except (re.error, TypeError) as err:
                raise fail(f"{sw}.pattern", f"invalid regular expression: {err}") from None
            attempts = s.get("max_attempts", 3)
            if not isinstance(attempts, int) or attempts < 1:
                raise fail(f"{sw}.max_attempts", "must be at least 1")
            slots.append(Slot(name, text(s.get("prompt"), f"{sw}.prompt"), pattern,
                              text(s.get("invalid"), f"{sw}.invalid", "Please try again."), attempts))
        if not slots:
            raise fail(where, "a flow needs at least one slot")
        flows.append(Flow(flow_id, questions(fl.get("questions"), f"{where}.questions"), tuple(slots),
                          text(fl.get("done"), f"{where}.done"), bool(fl.get("handoff", False))))

    def intent(name: str) -> tuple[str, ...]:
        section = raw.get(name)
        if section is None:
            return ()
        return questions(section.get("questions"), f"{name}.questions")

    return Knowledge(
        greeting=text(raw.get("greeting"), "greeting", "Hi! How can I help?"),
        fallback=text(raw.get("fallback"), "fallback", "Sorry, I didn't understand. Could you rephrase it?"),
        handoff=text(raw.get("handoff"), "handoff", "Connecting you to an agent."),
        after_hours=text(raw.get("after_hours"), "after_hours", "Our agents are offline. Leave a message and we'll reply."),
        message_left=text(raw.get("message_left"), "message_left", "Thanks, your message is saved."),
        resolved=text(raw.get("resolved"), "resolved", "Glad I could help!"),
        quick_replies=buttons(raw.get("quick_replies"), "quick_replies"),
        handoff_questions=intent("handoff_intent") or ("human", "agent", "人工"),
        resolved_questions=intent("resolved_intent"),
        faq=tuple(faq),
        flows=tuple(flows),
    )
