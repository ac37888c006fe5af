"""Business hours moved to :mod:`supportchat.hours` (the bot and the
workflow share them, and the config validates their rules); re-exported
here for the modules that still import them from the bot package."""

from supportchat.hours import DAYS, BusinessHours, parse_rule

__all__ = ["DAYS", "BusinessHours", "parse_rule"]
