-- The initial schema, in SQL that runs unchanged on SQLite (>= 3.35) and PostgreSQL (>= 15).
--
-- Portable types only: ids are TEXT (UUID strings; message ids are UUIDv7, so they sort by
-- creation time), times are BIGINT epoch milliseconds, flags are BOOLEAN (0/1 on SQLite), JSON
-- is TEXT, and permission bitflags are BIGINT (signed 64-bit: bits 0..62 are usable).
-- Secrets (MFA seeds, OIDC client secrets) are stored AES-256-GCM encrypted, base64 TEXT.
--
-- ON DELETE CASCADE where a row means nothing without its parent; SET NULL where the row
-- outlives a parent it merely points at. Users are disabled rather than deleted, so references
-- to authored content (guild owner, message author) keep the default and block a hard delete.
-- PostgreSQL does not index foreign keys by itself: every referencing column that a cascade
-- has to search has an index (or is the leading column of one).

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    -- Uniqueness is case-insensitive (Alice and alice cannot both exist); the service stores
    -- the lower-cased form here because the two dialects have no common case-folding collation.
    username_lower  TEXT NOT NULL UNIQUE,
    email           TEXT,
    email_lower     TEXT UNIQUE,
    display_name    TEXT,
    avatar          TEXT,
    -- NULL for accounts that only sign in through OIDC.
    password_hash   TEXT,
    auth_method     TEXT NOT NULL DEFAULT 'local' CHECK (auth_method IN ('local', 'oidc')),
    -- "{provider slug}:{subject}" for OIDC accounts.
    external_id     TEXT UNIQUE,
    status          TEXT NOT NULL DEFAULT 'online'
                    CHECK (status IN ('online', 'away', 'busy', 'offline')),
    activity        TEXT,
    mfa_secret_enc  TEXT,
    mfa_enabled     BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last TOTP time step accepted, so a code cannot be replayed within its window.
    mfa_last_step   BIGINT,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL
);

CREATE TABLE sessions (
    id                    TEXT PRIMARY KEY,
    user_id               TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the current refresh token (the token itself is never stored).
    refresh_hash          TEXT NOT NULL UNIQUE,
    ip                    TEXT,
    user_agent            TEXT,
    created_at            BIGINT NOT NULL,
    last_used_at          BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    revoked_at            BIGINT
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Every refresh token a session has rotated away from, so that presenting any of them again is
-- recognised as reuse (a stolen token) and the whole session is revoked.
CREATE TABLE session_refresh_history (
    refresh_hash TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rotated_at   BIGINT NOT NULL
);
CREATE INDEX session_refresh_history_session_id_idx ON session_refresh_history (session_id);

CREATE TABLE system_admins (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

CREATE TABLE elevated_sessions (
    session_id     TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    elevated_until BIGINT NOT NULL
);

CREATE TABLE guilds (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    owner_id          TEXT NOT NULL REFERENCES users (id),
    icon              TEXT,
    security_settings TEXT NOT NULL DEFAULT '{}',
    created_at        BIGINT NOT NULL
);
CREATE INDEX guilds_owner_id_idx ON guilds (owner_id);

CREATE TABLE guild_members (
    guild_id      TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nickname      TEXT,
    joined_at     BIGINT NOT NULL,
    timeout_until BIGINT,
    PRIMARY KEY (guild_id, user_id)
);
CREATE INDEX guild_members_user_id_idx ON guild_members (user_id);

CREATE TABLE guild_roles (
    id          TEXT PRIMARY KEY,
    guild_id    TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    permissions BIGINT NOT NULL DEFAULT 0,
    position    INTEGER NOT NULL DEFAULT 0,
    -- The guild's @everyone role.
    is_default  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX guild_roles_guild_id_idx ON guild_roles (guild_id, position);
-- Permission resolution assumes exactly one @everyone role per guild.
CREATE UNIQUE INDEX guild_roles_one_default_idx ON guild_roles (guild_id) WHERE is_default;

CREATE TABLE guild_member_roles (
    guild_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    role_id  TEXT NOT NULL REFERENCES guild_roles (id) ON DELETE CASCADE,
    PRIMARY KEY (guild_id, user_id, role_id),
    -- Leaving or being kicked from a guild drops the member's roles with the membership.
    FOREIGN KEY (guild_id, user_id) REFERENCES guild_members (guild_id, user_id) ON DELETE CASCADE
);
CREATE INDEX guild_member_roles_role_id_idx ON guild_member_roles (role_id);

CREATE TABLE channel_categories (
    id         TEXT PRIMARY KEY,
    guild_id   TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    position   INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX channel_categories_guild_id_idx ON channel_categories (guild_id, position);

CREATE TABLE channels (
    id           TEXT PRIMARY KEY,
    guild_id     TEXT REFERENCES guilds (id) ON DELETE CASCADE,
    name         TEXT,
    channel_type TEXT NOT NULL CHECK (channel_type IN ('text', 'voice', 'dm')),
    category_id  TEXT REFERENCES channel_categories (id) ON DELETE SET NULL,
    position     INTEGER NOT NULL DEFAULT 0,
    topic        TEXT,
    icon         TEXT,
    created_at   BIGINT NOT NULL,
    -- DMs, and only DMs, belong to no guild.
    CHECK ((channel_type = 'dm') = (guild_id IS NULL))
);
CREATE INDEX channels_guild_id_idx ON channels (guild_id, position);
CREATE INDEX channels_category_id_idx ON channels (category_id);

CREATE TABLE dm_recipients (
    channel_id TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX dm_recipients_user_id_idx ON dm_recipients (user_id);

CREATE TABLE channel_overrides (
    channel_id TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    role_id    TEXT NOT NULL REFERENCES guild_roles (id) ON DELETE CASCADE,
    allow      BIGINT NOT NULL DEFAULT 0,
    deny       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, role_id)
);
CREATE INDEX channel_overrides_role_id_idx ON channel_overrides (role_id);

CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    channel_id   TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    -- Copied from the channel (NULL in DMs) so guild search needs no join.
    guild_id     TEXT REFERENCES guilds (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id),
    -- Ciphertext when encrypted; the server never indexes or parses it.
    content      TEXT NOT NULL DEFAULT '',
    encrypted    BOOLEAN NOT NULL DEFAULT FALSE,
    nonce        TEXT,
    reply_to     TEXT REFERENCES messages (id) ON DELETE SET NULL,
    mention_type TEXT CHECK (mention_type IN ('user', 'here', 'everyone')),
    mentions     TEXT NOT NULL DEFAULT '[]',
    created_at   BIGINT NOT NULL,
    edited_at    BIGINT,
    deleted_at   BIGINT
);
-- History pages are "WHERE channel_id = ? AND id < ? ORDER BY id DESC LIMIT ?".
CREATE INDEX messages_channel_id_idx ON messages (channel_id, id);
CREATE INDEX messages_guild_id_idx ON messages (guild_id, id);
CREATE INDEX messages_user_id_idx ON messages (user_id);
CREATE INDEX messages_reply_to_idx ON messages (reply_to);

CREATE TABLE file_attachments (
    id          TEXT PRIMARY KEY,
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    filename    TEXT NOT NULL,
    mime_type   TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    storage_key TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX file_attachments_message_id_idx ON file_attachments (message_id);

CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);
CREATE INDEX reactions_user_id_idx ON reactions (user_id);

CREATE TABLE user_devices (
    user_id                 TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id               TEXT NOT NULL,
    identity_key            TEXT NOT NULL,
    signing_key             TEXT NOT NULL,
    signed_prekey           TEXT,
    signed_prekey_signature TEXT,
    updated_at              BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES user_devices (user_id, device_id) ON DELETE CASCADE
);

CREATE TABLE oidc_providers (
    id                TEXT PRIMARY KEY,
    slug              TEXT NOT NULL UNIQUE,
    display_name      TEXT NOT NULL,
    icon_hint         TEXT,
    issuer_url        TEXT NOT NULL,
    client_id         TEXT NOT NULL,
    client_secret_enc TEXT,
    scopes            TEXT NOT NULL DEFAULT 'openid profile email',
    enabled           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at        BIGINT NOT NULL
);

CREATE TABLE invites (
    code       TEXT PRIMARY KEY,
    guild_id   TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    inviter_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    max_uses   INTEGER,
    uses       INTEGER NOT NULL DEFAULT 0,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    -- A join that would overshoot max_uses fails instead of slipping through a race.
    CHECK (uses >= 0 AND (max_uses IS NULL OR uses <= max_uses))
);
CREATE INDEX invites_guild_id_idx ON invites (guild_id);
CREATE INDEX invites_inviter_id_idx ON invites (inviter_id);

CREATE TABLE guild_bans (
    guild_id   TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reason     TEXT,
    banned_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);
CREATE INDEX guild_bans_user_id_idx ON guild_bans (user_id);
CREATE INDEX guild_bans_banned_by_idx ON guild_bans (banned_by);

CREATE TABLE friendships (
    id           TEXT PRIMARY KEY,
    requester_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    addressee_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted')),
    created_at   BIGINT NOT NULL,
    accepted_at  BIGINT,
    CHECK (requester_id <> addressee_id)
);
-- One row per unordered pair: a request from B to A while A's request to B is pending (or
-- accepted) is a conflict, not a second friendship.
CREATE UNIQUE INDEX friendships_pair_idx ON friendships (
    (CASE WHEN requester_id < addressee_id THEN requester_id ELSE addressee_id END),
    (CASE WHEN requester_id < addressee_id THEN addressee_id ELSE requester_id END)
);
CREATE INDEX friendships_requester_id_idx ON friendships (requester_id);
CREATE INDEX friendships_addressee_id_idx ON friendships (addressee_id);

CREATE TABLE guild_emoji (
    id          TEXT PRIMARY KEY,
    guild_id    TEXT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    mime_type   TEXT NOT NULL,
    uploader_id TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (guild_id, name)
);
CREATE INDEX guild_emoji_uploader_id_idx ON guild_emoji (uploader_id);

-- No foreign keys on purpose: the log must outlive the users, guilds and objects it describes
-- (deleting a guild is itself an audited action).
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    actor_id    TEXT,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    guild_id    TEXT,
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);
CREATE INDEX audit_log_guild_id_idx ON audit_log (guild_id, created_at);

-- Runtime-editable settings (registration_policy, limits); values are JSON.
CREATE TABLE server_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
