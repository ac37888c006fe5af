-- History, retention and privacy: when a conversation was closed, and the
-- indexes for listing conversations by customer, agent, status and last
-- activity, and for finding a sender's messages (export, erase).
-- (History by (conversation, seq) is the unique index from 001.)
ALTER TABLE conversations ADD COLUMN closed_at DOUBLE PRECISION;
CREATE INDEX conversations_status_activity ON conversations (status, last_ts);
CREATE INDEX conversations_last_activity ON conversations (last_ts);
CREATE INDEX conversations_closed ON conversations (status, closed_at);
CREATE INDEX participants_user_role ON participants (user_id, role, conversation_id);
CREATE INDEX messages_sender ON messages (sender_id);
