-- Since when an agent has been connected nowhere (0: connected, or never
-- seen gone). The workflow's timer sets it, sets the agent offline after
-- [workflow] offline_grace and puts their conversations back in the queue
-- after requeue_offline_after, even when the node that held their
-- connection died (docs/workflow.md, "Agents who leave").
ALTER TABLE agents ADD COLUMN absent_since DOUBLE PRECISION NOT NULL DEFAULT 0;
