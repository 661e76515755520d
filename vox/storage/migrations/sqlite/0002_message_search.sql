-- Full-text search over messages, SQLite side (FTS5, external content).
--
-- Only plaintext, live messages are indexed: the triggers add a message when it is stored with
-- encrypted = 0 and deleted_at IS NULL, and take it out again when it is edited, encrypted,
-- soft-deleted or deleted. A search query joins back to messages through the id map:
--
--     SELECT m.id, m.channel_id, ... FROM messages_fts AS f
--       JOIN messages_fts_ids AS i ON i.seq = f.rowid
--       JOIN messages AS m ON m.id = i.message_id
--      WHERE messages_fts MATCH :query AND m.guild_id = :guild_id
--      ORDER BY f.rank LIMIT :limit
--
-- :query is FTS5 query syntax, so user text must be quoted term by term ("foo" "bar"),
-- otherwise a stray quote or operator in it is a syntax error.
--
-- Why the id map: messages.id is TEXT, so its rows only have an implicit rowid, which VACUUM may
-- renumber; an index keyed on that rowid could then point at the wrong (even an encrypted)
-- message. messages_fts_ids.seq is an INTEGER PRIMARY KEY, which VACUUM keeps. A message has a
-- row in the map exactly while it is in the index, with the content it was indexed with.
--
-- The tokenizer keeps diacritics, like PostgreSQL's 'simple' configuration, so both backends
-- find the same messages.

CREATE TABLE messages_fts_ids (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE
);

-- The external content the index reads for 'rebuild' and for returning column values.
CREATE VIEW messages_fts_source AS
    SELECT i.seq AS seq, m.content AS content
      FROM messages_fts_ids AS i
      JOIN messages AS m ON m.id = i.message_id;

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content,
    content = 'messages_fts_source',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 0'
);

CREATE TRIGGER messages_fts_after_insert AFTER INSERT ON messages
WHEN new.encrypted = 0 AND new.deleted_at IS NULL
BEGIN
    INSERT INTO messages_fts_ids (message_id) VALUES (new.id);
    INSERT INTO messages_fts (rowid, content)
        SELECT seq, new.content FROM messages_fts_ids WHERE message_id = new.id;
END;

-- An external-content index forgets a row only when told the exact text it indexed.
CREATE TRIGGER messages_fts_after_delete AFTER DELETE ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', seq, old.content FROM messages_fts_ids WHERE message_id = old.id;
    DELETE FROM messages_fts_ids WHERE message_id = old.id;
END;

CREATE TRIGGER messages_fts_after_update AFTER UPDATE OF id, content, encrypted, deleted_at ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content)
        SELECT 'delete', seq, old.content FROM messages_fts_ids WHERE message_id = old.id;
    DELETE FROM messages_fts_ids WHERE message_id = old.id;
    INSERT INTO messages_fts_ids (message_id)
        SELECT new.id WHERE new.encrypted = 0 AND new.deleted_at IS NULL;
    INSERT INTO messages_fts (rowid, content)
        SELECT seq, new.content FROM messages_fts_ids
         WHERE message_id = new.id AND new.encrypted = 0 AND new.deleted_at IS NULL;
END;

-- Index whatever a database upgraded from 0001 already holds.
INSERT INTO messages_fts_ids (message_id)
    SELECT id FROM messages WHERE encrypted = 0 AND deleted_at IS NULL ORDER BY id;
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
