-- Full-text search over messages, PostgreSQL side (generated tsvector + GIN).
--
-- search_vector is computed from content for plaintext, live messages and is empty for
-- encrypted or soft-deleted ones, so ciphertext and deleted text can never match, whatever the
-- query forgets to filter. A search query:
--
--     SELECT m.id, m.channel_id, ... FROM messages AS m
--      WHERE m.search_vector @@ websearch_to_tsquery('simple', :query)
--        AND m.guild_id = :guild_id
--      ORDER BY ts_rank(m.search_vector, websearch_to_tsquery('simple', :query)) DESC
--      LIMIT :limit
--
-- websearch_to_tsquery accepts any user text without syntax errors. 'simple' (no stemming, no
-- stop words) because a community's language is not known in advance, and because it matches
-- what SQLite's unicode61 tokenizer finds. Name the columns in SELECTs on messages: this
-- column exists only on PostgreSQL, so SELECT * differs between the backends.

ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    CASE WHEN encrypted OR deleted_at IS NOT NULL THEN ''::tsvector
         ELSE to_tsvector('simple'::regconfig, content)
    END
) STORED;

CREATE INDEX messages_search_vector_idx ON messages USING GIN (search_vector);
