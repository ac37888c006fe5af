"""The first-line bot: knowledge, matching, dialogue, state and the node
that consumes committed customer messages (see docs/architecture.md)."""
