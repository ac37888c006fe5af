"""Routing: what each client frame does. Knows nothing of Autobahn."""
