"""WebSocket edge: frames are parsed here and handed to ``handlers``."""
