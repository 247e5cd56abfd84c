"""Atomic file writes: readers (another Ray worker, the driver, a resumed study) see the old file or all of the
new one, never a prefix, also on a shared file system. Every file of a study is written through here."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform/filesystem lets a directory be fsync'ed)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary sibling and ``os.replace``.

    ``durable`` fsyncs the file and its folder, so the rename survives a power cut (the endpoint store needs it;
    small reports can skip the cost). The parent folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
