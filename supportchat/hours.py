"""Business hours: ``["mon-fri 09:00-18:00", "sat 10:00-14:00"]`` in a
time zone; an empty list means agents are always available. Shared by the
bot and the workflow (``[bot] business_hours`` in ``[bot] timezone``); the
config checks the rules with :func:`parse_rule`."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RULE = re.compile(r"^\s*([a-z]{3})(?:-([a-z]{3}))?\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})\s*$")


def parse_rule(rule: str) -> tuple[set[int], time, time]:
    """``"mon-fri 09:00-18:00"`` -> (weekdays, start, end); ValueError if malformed."""
    m = _RULE.match(rule.lower())
    if not m or m.group(1) not in DAYS or (m.group(2) and m.group(2) not in DAYS):
        raise ValueError(f"expected e.g. 'mon-fri 09:00-18:00', got {rule!r}")
    first = DAYS.index(m.group(1))
    last = DAYS.index(m.group(2)) if m.group(2) else first
    days = set(range(first, last + 1)) if first <= last else set(range(first, 7)) | set(range(0, last + 1))
    h1, m1, h2, m2 = (int(m.group(i)) for i in range(3, 7))
    if not (h1 < 24 and m1 < 60 and (h2 < 24 or (h2 == 24 and m2 == 0)) and m2 < 60):
        raise ValueError(f"invalid time in {rule!r}")
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    return days, time(h1, m1), end


class BusinessHours:
    def __init__(self, rules: list[str], timezone: str = "UTC") -> None:
        self._rules = [parse_rule(r) for r in rules]
        self._tz = ZoneInfo(timezone)

    def is_open(self, now: float) -> bool:
        if not self._rules:
            return True
        local = datetime.fromtimestamp(now, self._tz)
        t = local.time()
        return any(local.weekday() in days and start <= t < end for days, start, end in self._rules)

    def next_open(self, now: float) -> float | None:
        """When agents work next: ``now`` if open now, else the start of the
        next opening (within a week); None without rules (always open)."""
        if not self._rules:
            return None
        if self.is_open(now):
            return now
        local = datetime.fromtimestamp(now, self._tz)
        best: float | None = None
        for offset in range(8):
            day = (local + timedelta(days=offset)).date()
            for days, start, _ in self._rules:
                if day.weekday() in days:
                    at = datetime.combine(day, start, self._tz).timestamp()
                    if at > now and (best is None or at < best):
                        best = at
            if best is not None:
                return best
        return best

    def describe(self, ts: float) -> str:
        """``ts`` in the business time zone, e.g. ``Mon 06 Jan 09:00 UTC``."""
        return datetime.fromtimestamp(ts, self._tz).strftime("%a %d %b %H:%M %Z")
