"""Crash-safe file writing: write to a temporary name, flush, fsync, rename, fsync the folder.

A reader (or a restart after ``kill -9``) then sees either the old file or the new one,
never a half-written one: ``os.replace`` is atomic within one filesystem, and the fsync of
the folder makes the rename itself durable.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_DIR = ".tmp"  # scratch folder inside each stream folder: same filesystem, so renames are atomic


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the renames inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the data files are synced
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def publish_files(scratch: Path, folder: Path, names: list[str]) -> None:
    """Move the finished files ``names`` from ``scratch`` into ``folder`` after fsyncing each;
    in the given order, so the one that marks completion (a header) can come last."""
    for name in names:
        fsync_file(scratch / name)
    for name in names:
        os.replace(scratch / name, folder / name)
    fsync_dir(folder)


def scratch_dir(folder: Path) -> Path:
    path = folder / TMP_DIR
    path.mkdir(exist_ok=True)
    return path
