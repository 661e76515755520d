-- Federated identities and messages rebuilt from other servers (docs/federation.md).
--
-- A user of another server appears here as a users row named "name@domain" with home_domain
-- set (NULL for this server's own users) and remote_user_id their id on that server. Such rows
-- have no password, so they can never sign in locally; a guest session is opened only through
-- a voucher. Local usernames cannot contain "@", so the two never collide.
ALTER TABLE users ADD COLUMN home_domain TEXT;
ALTER TABLE users ADD COLUMN remote_user_id TEXT;
CREATE INDEX users_home_domain_idx ON users (home_domain);

-- A message relayed from another server keeps our own id and timestamp; remote_origin and
-- remote_id record where it came from and what the sender called it, and make a redelivered
-- relay land once.
ALTER TABLE messages ADD COLUMN remote_origin TEXT;
ALTER TABLE messages ADD COLUMN remote_id TEXT;
CREATE UNIQUE INDEX messages_remote_idx ON messages (remote_origin, remote_id)
    WHERE remote_origin IS NOT NULL;
