"""Prometheus metrics, in a registry per server (tests stay independent)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# One bucket set for every hop of a message's path (50 us .. 2.5 s), so the
# hops' histograms can be read side by side and added up (docs/benchmarks.md).
HOP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How late the reactor's watchdog timer fires (1 ms .. 1 s).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Hop:
    """Times one hop of a message's path into a histogram: ``started =
    hop.now()`` before it, ``hop.since(started)`` after it. A float and one
    ``observe`` per message, nothing else.

    The clock is ``time.perf_counter`` (monotonic, sub-microsecond), not the
    reactor's ``seconds()``: these are durations, several of them far below
    a millisecond and inside one reactor turn, where a test ``Clock`` would
    never move and the real reactor's wall clock may step. Tests pass their
    own ``now``."""

    __slots__ = ("now", "observe")

    def __init__(self, histogram: Histogram, now: Callable[[], float]) -> None:
        self.now = now
        self.observe = histogram.observe

    def since(self, started: float) -> None:
        self.observe(self.now() - started)


class Metrics:
    """Every metric the server exports at /metrics."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "websocket_connections_active", "Open WebSocket chat connections.", registry=r
        )
        self.messages_received = Counter(
            "messages_received_total", "Chat message frames received from clients.", registry=r
        )
        self.messages_acked = Counter(
            "messages_acknowledged_total", "Chat messages acknowledged after commit (duplicates included).", registry=r
        )
        self.messages_duplicate = Counter(
            "messages_duplicate_total", "Chat messages recognised as repeats of an earlier client_msg_id.", registry=r
        )
        self.messages_written = Counter(
            "messages_written_total",
            "Appends through the message writer by every producer (chat, workflow, bot), by kind (text, event) "
            "and result (new, or duplicate of an earlier idempotency key).", ["kind", "result"], registry=r
        )
        self.messages_delivered = Counter(
            "messages_delivered_total", "Message frames pushed to recipient connections.", registry=r
        )
        self.handshake_rejections = Counter(
            "handshake_rejections_total", "WebSocket handshakes refused, by reason.", ["reason"], registry=r
        )
        self.slow_consumer_disconnects = Counter(
            "websocket_slow_consumer_disconnects_total",
            "WebSocket connections closed (1013) for not reading what they were sent, by trigger "
            "(buffer: send_buffer_limit passed; timeout: not drained within send_timeout).", ["trigger"], registry=r
        )
        self.http_refusals = Counter(
            "http_refusals_total",
            "HTTP requests refused before any resource ran, by reason (request_timeout: 408, "
            "body_too_large: 413).", ["reason"], registry=r
        )
        self.frame_errors = Counter(
            "frame_errors_total", "Error frames sent, by code.", ["code"], registry=r
        )
        self.persisted = Counter(
            "persister_messages_total", "Messages flushed from the stream to SQL by this node.", registry=r
        )
        self.persister_batches = Counter(
            "persister_batches_total", "Stream batches committed to SQL by this node.", registry=r
        )
        self.dead_letters = Counter(
            "persister_dead_letters_total", "Stream entries moved to the dead-letter stream.", registry=r
        )
        self.stream_backlog = Gauge(
            "stream_backlog_entries", "Stream entries not yet flushed to SQL (persister lag).", registry=r
        )
        self.degraded = Gauge(
            "redis_degraded", "1 while Redis is unreachable and messages go straight to SQL.", registry=r
        )
        self.replica_wait_timeouts = Counter(
            "redis_replica_wait_timeouts_total",
            "WAIT rounds in which fewer than [redis] wait_replicas replicas confirmed (messages refused).", registry=r
        )
        self.overloaded = Gauge(
            "backpressure_engaged", "1 while new messages are refused because persisters lag.", registry=r
        )
        self.nodes_alive = Gauge(
            "cluster_nodes_alive", "Nodes with a fresh heartbeat in Redis.", registry=r
        )
        self.bot_answers = Counter(
            "bot_answers_total", "Bot answers: knowledge (FAQ or finished flow), external (HTTP service), other.",
            ["source"], registry=r,
        )
        self.bot_handoffs = Counter(
            "bot_handoffs_total", "Conversations the bot handed to a human, by reason.", ["reason"], registry=r
        )
        self.bot_resolved = Counter(
            "bot_resolved_total", "Conversations the customer marked solved by the bot, without a handoff.", registry=r
        )
        self.bot_external = Counter(
            "bot_external_calls_total", "Calls to the external bot service, by outcome.", ["outcome"], registry=r
        )
        self.bot_reply_latency = Histogram(
            "bot_reply_latency_seconds", "Time from a customer's message to the bot's first reply being stored.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.ack_latency = Histogram(
            "message_ack_latency_seconds", "Time from receiving a message frame to sending its ack.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.reactor_lag = Histogram(
            "reactor_lag_seconds",
            "How late the reactor watchdog's periodic timer fired: the time the reactor was busy elsewhere "
            "(a long turn) when it was due.", buckets=LAG_BUCKETS, registry=r,
        )
        self.sqlite_checkpoint = Histogram(
            "sqlite_checkpoint_seconds",
            "SQLite: one background WAL checkpoint (PASSIVE, and RESTART when the WAL is large), off the commit path.",
            buckets=HOP_BUCKETS, registry=r,
        )
        self.sqlite_wal_pages = Gauge(
            "sqlite_wal_pages", "SQLite: pages in the WAL when the last background checkpoint started.", registry=r
        )
        # The per-hop latency budget of a message (docs/benchmarks.md).
        def hop(name: str, documentation: str) -> Hop:
            return Hop(Histogram(name, documentation, buckets=HOP_BUCKETS, registry=r), now)

        self.hop_parse = hop(
            "frame_parse_seconds", "WebSocket edge: a client frame's text to its typed frame (JSON and checks).")
        self.hop_append = hop(
            "message_append_seconds",
            "Message writer: an append handed to the chat store until it is stored (queue wait and commit).")
        self.hop_append_queue = hop(
            "append_queue_seconds",
            "SQL group commit: an append waiting for its batch's transaction to start (one per message).")
        self.hop_append_commit = hop(
            "append_commit_seconds",
            "SQL group commit: one batch's transaction, from handing it to the database pool to its commit "
            "(one per batch; includes waiting for the pool's thread).")
        self.hop_publish = hop(
            "message_publish_seconds",
            "Message writer: publishing a stored message on the bus (embedded: includes the local deliver).")
        self.hop_deliver = hop(
            "message_deliver_seconds",
            "A bus delivery encoded and pushed to this node's recipient connections (deliveries with any).")
        # Attachments (issue 16).
        self.attachment_uploads = Counter(
            "attachment_uploads_total", "Attachment uploads by outcome (stored, or the error code refusing them).",
            ["outcome"], registry=r,
        )
        self.attachment_bytes = Counter(
            "attachment_stored_bytes_total", "Bytes of attachments stored (after re-encoding, thumbnails excluded).",
            registry=r,
        )
        self.attachment_scans = Counter(
            "attachment_scans_total", "Virus scans of uploads by result: clean, infected, unavailable.",
            ["result"], registry=r,
        )
        # Webhooks (issue 17).
        self.webhook_deliveries = Counter(
            "webhook_deliveries_total",
            "Webhook delivery attempts by endpoint id and outcome: delivered, failed, refused, gone, dead.",
            ["endpoint", "outcome"], registry=r,
        )
        self.webhook_lag = Histogram(
            "webhook_delivery_lag_seconds", "From an event's time in the log to the receiver's 2xx.",
            buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0), registry=r,
        )
        self.webhook_pending = Gauge(
            "webhook_pending_conversations",
            "Conversations with events an endpoint has not had yet (seen by the dispatcher's last round).",
            ["endpoint"], registry=r,
        )
        # Email to visitors (issue 17).
        self.emails = Counter(
            "emails_total", "Emails to visitors by kind (reply, transcript) and outcome: sent, failed, dead.",
            ["kind", "outcome"], registry=r,
        )
        self.attachment_image_seconds = Histogram(
            "attachment_image_seconds", "Decoding, re-encoding and the thumbnail of one uploaded image.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r,
        )
