-- Server administration and SSO.
--
-- The audit log records where an admin action came from (the client address of the request;
-- NULL for the command line and for actions the server takes itself).
ALTER TABLE audit_log ADD COLUMN ip TEXT;
-- The server-wide log (GET /api/v1/admin/audit-log) pages through every entry newest first.
CREATE INDEX audit_log_created_id_idx ON audit_log (created_at, id);
-- The admin user list pages in creation order.
CREATE INDEX users_created_at_idx ON users (created_at, id);
