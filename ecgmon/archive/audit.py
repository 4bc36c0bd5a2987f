"""The append-only audit log: one JSON object per line, fsynced per entry, at the archive's
root (``audit.jsonl``): daemon starts and stops, alarms raised and cleared, who
acknowledged or silenced them (the authenticated key name when CURVE keys are on), source
faults and the archive's own faults.

Nothing secret goes in: source specs and texts pass through the MQTT password redaction,
and no key material is ever part of a message. An entry half-written by a crash is at most
the last line, which readers skip.
"""

from __future__ import annotations

from datetime import datetime, timezone
import json
import os
from pathlib import Path
from typing import Any

from ecgmon.payloads.mqtt import redact

AUDIT_FILE = "audit.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class AuditLog:
    """Appends entries to ``root/audit.jsonl``; every ``append`` is on disk when it returns."""

    def __init__(self, root: Path) -> None:
        self.path = root / AUDIT_FILE
        self._fh = None

    def append(self, entry_type: str, wall: float, **fields: Any) -> None:
        if self._fh is None:
            # O_APPEND: each line lands at the end even if another writer appended meanwhile.
            self._fh = open(self.path, "a", encoding="utf-8")
            if self._fh.tell() > 0:
                self._terminate_torn_line()
        iso = datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds")
        entry = {"wall": round(wall, 3), "time": iso.replace("+00:00", "Z"), "type": entry_type, **_clean(fields)}
        self._fh.write(json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _terminate_torn_line(self) -> None:
        """After a crash mid-line, start on a fresh line so the next entry stays readable."""
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                self._fh.write("\n")

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:  # the write that failed is still buffered: closing retries it
                pass


def read_audit(root: Path) -> list[dict]:
    """Every complete entry of ``root/audit.jsonl`` (a torn last line is skipped)."""
    path = root / AUDIT_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
