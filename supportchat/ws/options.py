"""The one mapping from our config to Autobahn's ``setProtocolOptions``.

Names are checked against the installed Autobahn (26.x): the per-message
deflate accept takes ``request_max_window_bits``, ``no_context_takeover``,
``window_bits``, ``mem_level`` and ``max_message_size``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

from supportchat.config import WebSocketConfig


def deflate_accept(config: WebSocketConfig, max_message_bytes: int) -> Callable[[Sequence[Any]], Any]:
    """Accept the client's first permessage-deflate offer with our window and
    memory settings; ask the client for the same window when it allows."""

    def accept(offers: Sequence[Any]) -> Any:
        for offer in offers:
            if not isinstance(offer, PerMessageDeflateOffer):
                continue
            no_takeover = True if offer.request_no_context_takeover else config.deflate_no_context_takeover
            window = config.deflate_window_bits
            if offer.request_max_window_bits:
                window = min(window, offer.request_max_window_bits)
            return PerMessageDeflateOfferAccept(
                offer,
                request_no_context_takeover=bool(config.deflate_no_context_takeover and offer.accept_no_context_takeover),
                request_max_window_bits=config.deflate_window_bits if offer.accept_max_window_bits else 0,
                no_context_takeover=no_takeover,
                window_bits=window,
                mem_level=config.deflate_mem_level,
                max_message_size=max_message_bytes,
            )
        return None

    return accept


def websocket_options(
    config: WebSocketConfig,
    allowed_origins: Sequence[str],
    max_message_bytes: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``WebSocketServerFactory.setProtocolOptions``."""
    limit = config.max_message_bytes if max_message_bytes is None else max_message_bytes
    frame_limit = config.max_frame_bytes if max_message_bytes is None else max_message_bytes
    options: dict[str, Any] = {
        "maxMessagePayloadSize": limit,
        "maxFramePayloadSize": frame_limit,
        # The chat protocol decodes each whole text message strictly and
        # fails the connection with 1007 itself (ws/protocol.py onMessage):
        # cheaper than validating every frame incrementally.
        "utf8validateIncoming": False,
        "failByDrop": False,
        "echoCloseCodeReason": False,
        "openHandshakeTimeout": config.open_handshake_timeout,
        "closeHandshakeTimeout": config.close_handshake_timeout,
        "tcpNoDelay": True,
        "allowedOrigins": list(allowed_origins),
        "allowNullOrigin": False,
        "webStatus": False,
    }
    if config.auto_ping_interval > 0:
        options["autoPingInterval"] = config.auto_ping_interval
        options["autoPingTimeout"] = config.auto_ping_timeout
        options["autoPingRestartOnAnyTraffic"] = True
    if config.deflate:
        options["perMessageCompressionAccept"] = deflate_accept(config, limit)
    return options
