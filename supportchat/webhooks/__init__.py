"""Signed webhooks from the durable message log (issue 17; docs/webhooks.md)."""
