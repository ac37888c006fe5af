-- Customer events of the webhook outbox (customer.updated, customer.erased)
-- belong to no conversation: subject holds the customer's principal key, so
-- an erase finds (and removes) them and the dispatcher orders them per
-- customer. Empty for conversation events.
ALTER TABLE webhook_outbox ADD COLUMN subject VARCHAR(128) NOT NULL DEFAULT '';
CREATE INDEX webhook_outbox_subject ON webhook_outbox (subject);
