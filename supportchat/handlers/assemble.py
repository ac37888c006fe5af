"""Puts the chat handlers together: one router whose dispatch table the
frame modules fill, with the workflow's hooks or none."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import MessageBus
from supportchat.config import ChatConfig
from supportchat.handlers.assignment import AssignmentFrames
from supportchat.handlers.connections import ConnectionRegistry
from supportchat.handlers.conversations import ConversationFrames
from supportchat.handlers.hooks import NoWorkflow, WorkflowHooks
from supportchat.handlers.messages import AttachmentClaims, MessageFrames
from supportchat.handlers.queue import WorkQueue
from supportchat.handlers.router import FrameRouter
from supportchat.handlers.sessions import Sessions
from supportchat.handlers.workflow import WorkflowChatHooks
from supportchat.handlers.writer import MessageWriter
from supportchat.metrics import Metrics
from supportchat.storage.interfaces import ChatStore, PresenceStore


def build_router(
    clock: IReactorTime, store: ChatStore, bus: MessageBus, presence: PresenceStore, registry: ConnectionRegistry,
    metrics: Metrics, background: BackgroundTasks, config: ChatConfig, heartbeat: int,
    writer: MessageWriter | None = None, queue: WorkQueue | None = None,
    attachments: AttachmentClaims | None = None, links: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> FrameRouter:
    """The router for this node's sessions. ``queue`` (the workflow's)
    turns the workflow on: its hooks join the chat path and its frames
    (status, take, transfer, close, rate) are registered. ``attachments``
    lets messages carry uploads; ``links`` mints their download links."""
    if writer is None:
        writer = MessageWriter(clock, store, bus, metrics, links)
    hooks: WorkflowHooks = NoWorkflow() if queue is None else WorkflowChatHooks(queue)
    sessions = Sessions(clock, store, bus, presence, registry, metrics, background, config, heartbeat, hooks)
    router = FrameRouter(clock, sessions, metrics, config)
    MessageFrames(clock, store, writer, bus, metrics, config, hooks, attachments, links).register(router)
    ConversationFrames(clock, store, writer, bus, hooks).register(router, workflow=queue is not None)
    if queue is not None:
        AssignmentFrames(queue).register(router)
    return router
