-- Identities namespaced by role: see 009_principals.sql (MySQL/MariaDB:
-- the id columns are widened for the "c:" prefix first; CONCAT, since ||
-- is OR here).
ALTER TABLE conversations MODIFY customer_id VARCHAR(160) NOT NULL;
ALTER TABLE participants MODIFY user_id VARCHAR(160) NOT NULL;
ALTER TABLE messages MODIFY sender_id VARCHAR(160) NOT NULL;
ALTER TABLE idempotency_keys MODIFY sender_id VARCHAR(160) NOT NULL;
ALTER TABLE work_items MODIFY customer_id VARCHAR(160) NOT NULL;
UPDATE idempotency_keys SET sender_id = CONCAT('c:', sender_id)
    WHERE msg_id IN (SELECT msg_id FROM messages WHERE sender_role = 'customer');
UPDATE participants SET user_id = CONCAT('c:', user_id) WHERE role = 'customer';
UPDATE messages SET sender_id = CONCAT('c:', sender_id) WHERE sender_role = 'customer';
UPDATE conversations SET customer_id = CONCAT('c:', customer_id);
UPDATE work_items SET customer_id = CONCAT('c:', customer_id);
