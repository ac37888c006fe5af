-- Customer profiles (supportchat/workflow/profiles.py, docs/profiles.md).
-- sensitive_values holds a JSON object of AES-GCM ciphertexts
-- ("v1:<kid>:<base64>"), never plaintext; phone_index is the hex
-- HMAC-SHA256 blind index of the normalised phone number.
CREATE TABLE customer_profiles (
    customer_id VARCHAR(128) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    email VARCHAR(320) NOT NULL,
    attributes TEXT NOT NULL,
    sensitive_values TEXT NOT NULL,
    phone_index VARCHAR(64),
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX customer_profiles_phone ON customer_profiles (phone_index);
