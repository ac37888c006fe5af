-- MySQL/MariaDB variant of 007_profiles.sql: the same table, InnoDB,
-- utf8mb4 with a binary collation (ids and index hashes compare exactly).
-- (SENSITIVE is a reserved word in MySQL, hence sensitive_values.)
CREATE TABLE customer_profiles (
    customer_id VARCHAR(128) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    email VARCHAR(320) NOT NULL,
    attributes TEXT NOT NULL,
    sensitive_values TEXT NOT NULL,
    phone_index VARCHAR(64),
    updated_at DOUBLE PRECISION NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX customer_profiles_phone ON customer_profiles (phone_index);
