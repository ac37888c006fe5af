-- Full-text search over message bodies, PostgreSQL: a generated tsvector
-- (the language-neutral 'simple' configuration) with a GIN index.
ALTER TABLE messages ADD COLUMN body_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_body_tsv ON messages USING GIN (body_tsv);
