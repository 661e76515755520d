"""Online backups of a Vox deployment and the way back: ``vox backup PATH`` / ``vox restore PATH``.

A backup is a directory (mode 0700) holding everything a restore needs, written under a temporary
name beside PATH and renamed into place only once complete and verified:

- ``vox.db``: a consistent copy of the SQLite database (``sqlite3`` backup API, read from one WAL
  snapshot while the daemon keeps writing), or ``database.dump``: ``pg_dump --format=custom`` of
  the PostgreSQL database, taken from an exported snapshot;
- ``keys/``: the server keys of the data directory (without them every token is invalid and stored
  MFA/OIDC secrets are unreadable);
- ``blobs/``: local attachments and emoji, unless ``--no-blobs`` (or S3 holds them);
- ``manifest.json``: the layout version, database kind, schema version, row counts of the main
  tables and the size and SHA-256 of every file, which ``vox restore`` checks before it touches
  anything.
"""

from __future__ import annotations

from vox.backup.make import BackupOptions, BackupSummary, make_backup
from vox.backup.restore import RestoreSummary, restore_backup

__all__ = ["BackupOptions", "BackupSummary", "RestoreSummary", "make_backup", "restore_backup"]
