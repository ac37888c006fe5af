"""The support workflow: agent accounts, status and capacity, the queue
with automatic assignment, transfer, close and ratings."""
