"""supportchat: a self-hosted real-time customer-support chat server."""

__version__ = "0.1.0"
