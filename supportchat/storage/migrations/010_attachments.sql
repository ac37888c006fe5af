-- Attachments (issue 16): one row per upload. The bytes are in the blob
-- store (blob_key, thumb_key: SHA-256 of the stored bytes); claim is set
-- once, by the message that carries the upload (sender key and
-- client_msg_id), with the conversation; unclaimed rows are swept after
-- [attachments] orphan_grace.
CREATE TABLE attachments (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    uploader VARCHAR(128) NOT NULL,
    name VARCHAR(255) NOT NULL,
    content_type VARCHAR(100) NOT NULL,
    size BIGINT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    width INTEGER,
    height INTEGER,
    blob_key VARCHAR(80) NOT NULL,
    thumb_key VARCHAR(80),
    thumb_type VARCHAR(100),
    scan VARCHAR(16) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    conversation_id VARCHAR(64),
    claim VARCHAR(300),
    claimed_at DOUBLE PRECISION
);
CREATE INDEX attachments_uploader ON attachments (uploader, created_at);
CREATE INDEX attachments_conversation ON attachments (conversation_id);
CREATE INDEX attachments_unclaimed ON attachments (claimed_at, created_at);
CREATE INDEX attachments_blob ON attachments (blob_key);
CREATE INDEX attachments_thumb ON attachments (thumb_key);
