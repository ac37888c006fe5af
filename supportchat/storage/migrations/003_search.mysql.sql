-- Full-text search over message bodies, MySQL/MariaDB: an InnoDB FULLTEXT
-- index. The body gets a case-insensitive collation so searches ignore case
-- (ids keep the binary collation).
ALTER TABLE messages MODIFY body TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL;
CREATE FULLTEXT INDEX messages_body_ft ON messages (body);
