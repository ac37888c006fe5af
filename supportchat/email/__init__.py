"""Email to visitors: offline replies and transcripts through SMTP, from a durable outbox (docs/email.md)."""
