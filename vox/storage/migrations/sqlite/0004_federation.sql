-- Federation: the durable outbox of server-to-server deliveries, and the inbox's memory of what
-- it already processed (docs/federation.md, "Outbox and delivery").
--
-- federation_outbox: one row per delivery still owed to a peer. Rows are delivered per
-- destination in id order and deleted once the peer acknowledged them; a row that fails waits
-- until next_attempt_at. lease_until/lease_owner let one daemon of several deliver a destination
-- while the others leave it alone (a crashed daemon's lease simply runs out).
-- The id is an INTEGER PRIMARY KEY with AUTOINCREMENT: ids must never be reused, because the
-- receiver deduplicates on (origin, id).
CREATE TABLE federation_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    destination     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    last_error      TEXT
);
CREATE INDEX federation_outbox_destination_idx ON federation_outbox (destination, id);

-- federation_inbox_seen: (origin, sender's outbox id) of every delivery already processed, so a
-- retry after a lost acknowledgement is answered without running its handler twice. Old rows
-- are pruned: a sender only retries a row until it is acknowledged.
CREATE TABLE federation_inbox_seen (
    origin      TEXT NOT NULL,
    outbox_id   BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (origin, outbox_id)
);
CREATE INDEX federation_inbox_seen_received_idx ON federation_inbox_seen (received_at);
