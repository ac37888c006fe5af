"""The dialogue: from (state, customer message) to (next state, replies).

Pure and synchronous: no I/O, no clock (the caller passes whether agents
are working now), so every rule is tested directly and a redelivered
message decided again from the same state gives the same replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supportchat.bot.knowledge import Knowledge, QuickReply
from supportchat.bot.matcher import Match, Matcher, has_cjk, language
from supportchat.bot.state import BotState, Reply
from supportchat.storage.models import EVENT, TEXT

HANDOFF = "@handoff"
RESOLVED = "@resolved"

# Handoff reasons (metrics label values and the event's "reason").
CUSTOMER_REQUEST = "customer_request"
NO_ANSWER = "no_answer"
FLOW = "flow"
FLOW_INVALID = "flow_invalid"
AFTER_HOURS = "after_hours"
EXTERNAL = "external"


@dataclass(frozen=True)
class ExternalAnswer:
    """What an external bot service answered (see bot/http.py)."""

    reply: str | None
    quick_replies: tuple[QuickReply, ...] = ()
    handoff: bool = False


@dataclass(frozen=True)
class Outcome:
    state: BotState
    replies: tuple[Reply, ...]
    handoff: str | None = None
    answered: str | None = None  # entry id (or "external") answered confidently
    resolved: bool = False


def _buttons(quick: tuple[QuickReply, ...]) -> dict[str, Any] | None:
    return {"quick_replies": [q.to_wire() for q in quick]} if quick else None


class Dialogue:
    def __init__(self, knowledge: Knowledge, threshold: float, max_misses: int) -> None:
        self.knowledge = knowledge
        self.max_misses = max_misses
        entries: dict[str, tuple[str, ...]] = {e.id: e.questions for e in knowledge.faq}
        entries.update({f.id: f.questions for f in knowledge.flows})
        entries[HANDOFF] = knowledge.handoff_questions
        if knowledge.resolved_questions:
            entries[RESOLVED] = knowledge.resolved_questions
        self.matcher = Matcher(entries, threshold)

    def classify(self, text: str) -> Match | None:
        return self.matcher.best(text)

    def greeting(self, lang: str = "en") -> Reply:
        """The greeting in ``lang``, with the quick replies and the greeting in
        every other language (``texts``): at a conversation's start the
        customer's language is not known yet, so the client picks."""
        k = self.knowledge
        data = _buttons(k.quick_replies) or {}
        others = {code: text for code, text in sorted(k.greeting.by_lang.items()) if code != lang}
        if others:
            data["texts"] = others
        return Reply(TEXT, k.greeting.get(lang), data or None)

    def needs_external(self, state: BotState, match: Match | None) -> bool:
        """Whether an external service should be asked (nothing local fits)."""
        return match is None and state.mode == "bot"

    def step(self, state: BotState, text: str, seq: int, msg_id: str, now: float, open_now: bool,
             match: Match | None, external: ExternalAnswer | None = None) -> Outcome:
        """Decide the answer to one customer message. The returned state is
        ``state.next(...)`` with the replies as its outbox."""
        k = self.knowledge
        lang = language(text) if state.mode != "flow" or has_cjk(text) else state.lang
        replies: list[Reply] = []
        changes: dict[str, Any] = {"last_seq": seq, "last_msg_id": msg_id, "updated_at": now, "lang": lang}
        if not state.greeted:
            replies.append(self.greeting(lang))
            changes["greeted"] = True
        handoff: str | None = None
        answered: str | None = None
        resolved = False

        def hand_off(reason: str) -> None:
            nonlocal handoff
            if open_now:
                replies.append(Reply(TEXT, k.handoff.get(lang)))
                replies.append(self._handoff_event(reason, seq))
                changes.update(mode="handed_off", handoff_reason=reason, flow=None, slot=0, attempts=0)
                handoff = reason
            else:
                replies.append(Reply(TEXT, k.after_hours.get(lang)))
                changes.update(mode="leaving_message", handoff_reason=reason, flow=None, slot=0, attempts=0)

        if state.mode == "handed_off":
            return Outcome(state.next(**changes), tuple(replies))
        if state.mode == "leaving_message":
            replies.append(Reply(TEXT, k.message_left.get(lang)))
            replies.append(self._handoff_event(AFTER_HOURS, seq))
            changes.update(mode="handed_off", handoff_reason=AFTER_HOURS)
            return Outcome(state.next(**changes), tuple(replies), AFTER_HOURS)
        if match is not None and match.key == HANDOFF:
            hand_off(CUSTOMER_REQUEST)
            return Outcome(state.next(**changes), tuple(replies), handoff)

        flow = k.flow(state.flow) if state.mode == "flow" and state.flow else None
        if flow is not None and state.slot < len(flow.slots):
            slot = flow.slots[state.slot]
            value = text.strip()
            if slot.pattern.fullmatch(value):
                slots = dict(state.slots, **{slot.name: value})
                nxt = state.slot + 1
                changes.update(slots=slots, slot=nxt, attempts=0)
                if nxt < len(flow.slots):
                    replies.append(Reply(TEXT, flow.slots[nxt].prompt.get(lang)))
                    return Outcome(state.next(**changes), tuple(replies))
                replies.append(Reply(TEXT, flow.done.get(lang).format_map(_Slots(slots))))
                changes.update(mode="bot", flow=None, slot=0, misses=0, answered=state.answered + 1)
                if flow.handoff:
                    hand_off(FLOW)
                return Outcome(state.next(**changes), tuple(replies), handoff, None if flow.handoff else flow.id)
            switching = match is not None and match.key != flow.id and match.key != RESOLVED
            if not switching:
                attempts = state.attempts + 1
                if attempts >= slot.max_attempts:
                    changes.update(attempts=attempts)
                    hand_off(FLOW_INVALID)
                else:
                    changes.update(attempts=attempts)
                    replies.append(Reply(TEXT, slot.invalid.get(lang)))
                return Outcome(state.next(**changes), tuple(replies), handoff)
            changes.update(mode="bot", flow=None, slot=0, attempts=0, slots={})

        if match is not None and match.key == RESOLVED:
            replies.append(Reply(TEXT, k.resolved.get(lang)))
            changes.update(misses=0, resolved=True)
            return Outcome(state.next(**changes), tuple(replies), resolved=not state.resolved)
        if match is not None:
            entry = k.faq_entry(match.key)
            if entry is not None:
                replies.append(Reply(TEXT, entry.answer.get(lang), _buttons(entry.quick_replies)))
                changes.update(misses=0, answered=state.answered + 1)
                return Outcome(state.next(**changes), tuple(replies), answered=entry.id)
            new_flow = k.flow(match.key)
            if new_flow is not None:
                replies.append(Reply(TEXT, new_flow.slots[0].prompt.get(lang)))
                changes.update(mode="flow", flow=new_flow.id, slot=0, attempts=0, slots={}, misses=0)
                return Outcome(state.next(**changes), tuple(replies))
        if external is not None:
            if external.reply:
                replies.append(Reply(TEXT, external.reply, _buttons(external.quick_replies)))
            if external.handoff:
                hand_off(EXTERNAL)
                return Outcome(state.next(**changes), tuple(replies), handoff)
            if external.reply:
                changes.update(misses=0, answered=state.answered + 1)
                return Outcome(state.next(**changes), tuple(replies), answered="external")
        misses = state.misses + 1
        changes["misses"] = misses
        if misses >= self.max_misses:
            hand_off(NO_ANSWER)
        else:
            replies.append(Reply(TEXT, k.fallback.get(lang), _buttons(k.quick_replies)))
        return Outcome(state.next(**changes), tuple(replies), handoff)

    @staticmethod
    def _handoff_event(reason: str, seq: int) -> Reply:
        return Reply(EVENT, f"handed off to a human agent ({reason})",
                     {"name": "handoff", "reason": reason, "transcript": {"from_seq": 1, "to_seq": seq}})


class _Slots(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
