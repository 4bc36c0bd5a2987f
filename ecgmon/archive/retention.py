"""Retention: the oldest closed segments go first, by age (``keep_days``) and by the
archive's total size (``max_gb``); the layout header then starts at the first segment kept
(its ``first_sample`` keeps the indices of the rest). The newest segment of every stream
stays, and the audit log is never deleted (it is small, and it is the record of who did
what)."""

from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from pathlib import Path
import time

from ecgmon.archive.layout import NULL, Layout

log = logging.getLogger("ecgmon.archive")

CHECK_EVERY_S = 60.0


@dataclass
class _Seg:
    layout_key: Path | None  # None: a heart-sound segment (FLAC and JSON, no layout)
    name: str
    folder: Path
    mtime: float
    size: int


def _files(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.glob(f"{name}.*") if p.is_file()]


class Retention:
    def __init__(self, root: Path, keep_days: float, max_gb: float) -> None:
        self.root = root
        self.keep_days = keep_days
        self.max_gb = max_gb
        self._last = -1e18

    def due(self) -> bool:
        return (self.keep_days > 0 or self.max_gb > 0) and time.monotonic() - self._last >= CHECK_EVERY_S

    def run(self, active: dict[Path, Layout], force: bool = False) -> int:
        """Delete what is over the limits; ``active`` are the layouts being written (by
        ``folder/name``), changed in place. Returns the number of segments deleted."""
        if not force and not self.due():
            return 0
        self._last = time.monotonic()
        if self.keep_days <= 0 and self.max_gb <= 0:
            return 0
        layouts = dict(active)
        for hea in self.root.glob("*/*_layout.hea"):
            key = hea.parent / hea.name[: -len("_layout.hea")]
            if key not in layouts:
                try:
                    layouts[key] = Layout.load(hea.parent, key.name)
                except (OSError, ValueError, IndexError):
                    continue  # unreadable: left alone (`archive verify` names it)
        segs: list[_Seg] = []
        total = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        for key, layout in layouts.items():
            names = [n for n, _ in layout.entries if n != NULL]
            for name in names[:-1]:  # the newest stays
                files = _files(layout.folder, name)
                if files:
                    segs.append(_Seg(key, name, layout.folder, max(f.stat().st_mtime for f in files),
                                     sum(f.stat().st_size for f in files)))
        for pcg in self.root.glob("*/pcg"):
            metas = sorted(pcg.glob("*_pcg_*.json"))
            for meta in metas[:-1]:  # the newest stays
                files = [meta, meta.with_suffix(".flac")]
                files = [f for f in files if f.exists()]
                segs.append(_Seg(None, meta.stem, pcg, max(f.stat().st_mtime for f in files),
                                 sum(f.stat().st_size for f in files)))
        segs.sort(key=lambda s: s.mtime)
        cutoff = time.time() - self.keep_days * 86400 if self.keep_days > 0 else -1.0
        limit = self.max_gb * 1e9 if self.max_gb > 0 else float("inf")
        doomed: dict[Path | None, set[str]] = {}
        for seg in segs:
            if seg.mtime >= cutoff and total <= limit:
                break
            # Only a leading run of segments can go, so that the indices of the rest stay.
            doomed.setdefault(seg.layout_key, set()).add(seg.name)
            total -= seg.size
        deleted = 0
        for name in doomed.pop(None, set()):
            seg = next(s for s in segs if s.layout_key is None and s.name == name)
            # The JSON first: it is what marks a heart-sound segment complete.
            for f in (seg.folder / f"{name}.json", seg.folder / f"{name}.flac"):
                if f.exists():
                    os.unlink(f)
            deleted += 1
        for key, names in doomed.items():
            layout = layouts[key]
            before = {n for n, _ in layout.entries}
            layout.drop(names)
            gone = before - {n for n, _ in layout.entries} - {NULL}
            layout.save()  # the header first: it must never list a deleted segment
            for name in gone:
                for f in _files(layout.folder, name):
                    os.unlink(f)
                deleted += 1
        if deleted:
            log.info("archive retention: %d old segments deleted (keep_days %g, max_gb %g)",
                     deleted, self.keep_days, self.max_gb)
        return deleted
