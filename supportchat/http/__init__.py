"""HTTP edge: the WebSocket guard, health, metrics and the REST API."""
