"""Uploaded bytes on disk: one file per id in the configured folder, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


class Blobs:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    def put(self, file_id: str, data: bytes) -> str:
        """Write `data` (fsync, then rename: never half a file) and return its SHA-256."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.folder)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path(file_id))
        return hashlib.sha256(data).hexdigest()

    def get(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(file_id).unlink()
