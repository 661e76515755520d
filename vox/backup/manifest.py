"""The manifest of a backup directory and the file operations both directions share."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vox.errors import BackupError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "FileEntry",
    "Manifest",
    "copy_private",
    "copy_tree",
    "fsync_dir",
    "hash_file",
    "walk_files",
]

MANIFEST = "manifest.json"
# The backup layout; a restore refuses any other.
FORMAT = 1
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    database: str  # "sqlite" or "postgres"
    schema_version: int
    created_at: str
    vox_version: str
    blobs: str  # "included", "excluded" or "s3"
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "format": self.format,
            "database": self.database,
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "vox_version": self.vox_version,
            "blobs": self.blobs,
            "counts": self.counts,
            "files": {name: {"size": e.size, "sha256": e.sha256} for name, e in sorted(self.files.items())},
        }
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackupError(f"{directory} is not a Vox backup (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise BackupError(f"cannot read {path}: {exc}") from None
        try:
            if body["format"] != FORMAT:
                raise BackupError(f"{path}: backup format {body['format']!r}, this Vox reads {FORMAT}")
            return cls(
                database=str(body["database"]),
                schema_version=int(body["schema_version"]),
                created_at=str(body["created_at"]),
                vox_version=str(body["vox_version"]),
                blobs=str(body["blobs"]),
                counts={str(k): int(v) for k, v in body["counts"].items()},
                files={
                    str(name): FileEntry(int(e["size"]), str(e["sha256"]))
                    for name, e in body["files"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackupError(f"{path} is malformed ({exc!r})") from None

    def verify_files(self, directory: Path) -> None:
        """Every listed file is there with its size and hash, and nothing else is (BackupError)."""
        present = {p.relative_to(directory).as_posix() for p in walk_files(directory)} - {MANIFEST}
        missing = sorted(set(self.files) - present)
        extra = sorted(present - set(self.files))
        if missing or extra:
            raise BackupError(f"{directory}: files missing {missing[:5]} / unexpected {extra[:5]}")
        for name, entry in self.files.items():
            path = directory / name
            if path.stat().st_size != entry.size or hash_file(path) != entry.sha256:
                raise BackupError(f"{path} does not match the manifest (damaged or altered backup)")


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in a stable order; symlinks are not followed."""
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(current) / name
            if path.is_file() and not path.is_symlink():
                yield path


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_private(src: Path, dst: Path) -> None:
    """Copy one file as 0600 and fsync it (a restore must not rename a half-written file in)."""
    with src.open("rb") as source:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())


def copy_tree(src: Path, dst: Path, *, skip_temp: bool = False) -> int:
    """Copy the regular files under ``src`` into a new ``dst`` (directories 0700, files 0600).

    ``skip_temp`` leaves out the ``.name.xxxx.tmp`` files of uploads still being written. Returns
    the number of files copied.
    """
    dst.mkdir(mode=0o700)
    copied = 0
    for path in walk_files(src):
        if skip_temp and path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        target = dst / path.relative_to(src)
        parent = dst
        for part in target.parent.relative_to(dst).parts:
            parent = parent / part
            if not parent.exists():
                parent.mkdir(mode=0o700)
        try:
            copy_private(path, target)
        except FileNotFoundError:
            continue  # deleted while we walked: it is not part of the snapshot either
        copied += 1
    return copied
