-- Identities namespaced by role (docs/security.md, "Identities"): a
-- customer is known inside the server by the key "c:" + their id, staff
-- (agents, admins) and the system's senders by their id unchanged, so a
-- customer token whose sub equals an agent's id is another principal. This
-- rewrites what older versions stored under plain customer ids: their
-- participations, the messages they sent and their idempotency keys, and the
-- customer of every conversation and work item. Customer profiles stay
-- under the plain id (that table holds customers only). SQLite ignores
-- VARCHAR lengths; the other engines widen the columns for the prefix.
UPDATE idempotency_keys SET sender_id = 'c:' || sender_id
    WHERE msg_id IN (SELECT msg_id FROM messages WHERE sender_role = 'customer');
UPDATE participants SET user_id = 'c:' || user_id WHERE role = 'customer';
UPDATE messages SET sender_id = 'c:' || sender_id WHERE sender_role = 'customer';
UPDATE conversations SET customer_id = 'c:' || customer_id;
UPDATE work_items SET customer_id = 'c:' || customer_id;
