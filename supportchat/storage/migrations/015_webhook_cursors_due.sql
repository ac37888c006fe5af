-- The webhook dispatcher finds the conversations whose retry is due (or
-- that a replay sent back) by this index, instead of scanning every
-- conversation an endpoint has ever had.
CREATE INDEX webhook_cursors_due ON webhook_cursors (endpoint_id, next_at);
