-- Identities namespaced by role: see 009_principals.sql (PostgreSQL:
-- the id columns are widened for the "c:" prefix first).
ALTER TABLE conversations ALTER COLUMN customer_id TYPE VARCHAR(160);
ALTER TABLE participants ALTER COLUMN user_id TYPE VARCHAR(160);
ALTER TABLE messages ALTER COLUMN sender_id TYPE VARCHAR(160);
ALTER TABLE idempotency_keys ALTER COLUMN sender_id TYPE VARCHAR(160);
ALTER TABLE work_items ALTER COLUMN customer_id TYPE VARCHAR(160);
UPDATE idempotency_keys SET sender_id = 'c:' || sender_id
    WHERE msg_id IN (SELECT msg_id FROM messages WHERE sender_role = 'customer');
UPDATE participants SET user_id = 'c:' || user_id WHERE role = 'customer';
UPDATE messages SET sender_id = 'c:' || sender_id WHERE sender_role = 'customer';
UPDATE conversations SET customer_id = 'c:' || customer_id;
UPDATE work_items SET customer_id = 'c:' || customer_id;
