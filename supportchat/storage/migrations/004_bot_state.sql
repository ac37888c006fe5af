-- The bot's multi-turn dialogue state, one row per conversation, written
-- with compare-and-set on `version` so two bot nodes cannot both advance
-- one dialogue (supportchat/bot/state.py).
CREATE TABLE bot_states (
    conversation_id VARCHAR(64) NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    data TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
