"""Redis scale-out: the stream, idempotency, presence, session state and
cross-node delivery behind the same seams as the embedded defaults."""
