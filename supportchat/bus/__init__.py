"""The message bus: how a committed message reaches connections on any node."""
