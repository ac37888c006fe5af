-- Internal notes (issue 15) are staff-only entries of a conversation:
-- after_seq places a note after that message (notes written later sort
-- after it), note_id names it for clients. Notes written before this
-- migration have after_seq 0 (they show first) and no id.
ALTER TABLE work_notes ADD COLUMN after_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE work_notes ADD COLUMN note_id VARCHAR(32) NOT NULL DEFAULT '';
