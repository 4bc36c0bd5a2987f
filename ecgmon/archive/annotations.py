"""WFDB annotation files of a segment: the beats (``.ecgmon``) with their AAMI classes as
WFDB beat codes, and the events (``.event``): rhythm annotations (``+`` with ``(VT`` …) where
an alarm names a rhythm, note annotations (``"``) for every other alarm, technical event,
acknowledgement and change of the rhythm model's verdict.

Sample numbers are local to the segment, as WFDB defines annotations of a record; the
segment header's ``stream_start`` maps them back to the stream's (for a replayed record,
the record's own) indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

from ecgmon.archive.fsio import publish_files, scratch_dir

BEAT_EXT = "ecgmon"  # so that `bxb -r REC -a atr ecgmon` names the daemon's beats
EVENT_EXT = "event"

# AAMI classes as WFDB codes: S (supraventricular ectopic) is written as A (atrial
# premature), the usual code; an unclassified beat (no beat model) is Q.
BEAT_SYMBOL = {"N": "N", "S": "A", "V": "V", "F": "F", "Q": "Q"}
UNCLASSIFIED = "Q"

# Alarms that name a rhythm, with the rhythm codes of MIT-BIH and VFDB. Other alarms
# (rate limits, PVC runs, technical alarms) are notes.
RHYTHM_AUX = {
    "vtach": "(VT", "vfib": "(VFL", "afib": "(AFIB", "asystole": "(ASYS",
    "bigeminy": "(B", "trigeminy": "(T",
}
NORMAL_RHYTHM = "(N"  # written when the last rhythm alarm clears
MAX_AUX = 250  # WFDB aux strings are at most 255 bytes

Entry = tuple[int, str, str]  # (sample within the segment, symbol, aux note)


def beat_symbol(label: str | None) -> str:
    return BEAT_SYMBOL.get(label or "", UNCLASSIFIED)


def clip_aux(text: str) -> str:
    raw = text.encode("utf-8")[:MAX_AUX]
    return raw.decode("utf-8", errors="ignore")


def write_annotations(folder: Path, record: str, ext: str, fs: float, entries: list[Entry]) -> None:
    """Replace ``folder/record.ext`` by ``entries`` (sorted by sample), durably."""
    if not entries:
        return
    # A note at sample 0 is where WFDB keeps an annotation file's definitions (time
    # resolution, custom labels): readers drop it. One sample later it stays a note.
    entries = sorted(((1 if s == 0 and sym == '"' else s, sym, aux) for s, sym, aux in entries), key=lambda e: e[0])
    scratch = scratch_dir(folder)
    aux = [e[2] for e in entries]
    wfdb.wrann(
        record, ext, np.array([e[0] for e in entries], dtype=np.int64), symbol=[e[1] for e in entries],
        aux_note=aux if any(aux) else None, fs=fs, write_dir=str(scratch),
    )
    publish_files(scratch, folder, [f"{record}.{ext}"])


def read_annotations(folder: Path, record: str, ext: str) -> list[Entry]:
    """The entries of ``folder/record.ext``; [] if there is no such file."""
    if not (folder / f"{record}.{ext}").exists():
        return []
    ann = wfdb.rdann(str(folder / record), ext)
    aux = ann.aux_note or [""] * len(ann.sample)
    return [(int(s), str(sym), str(a or "")) for s, sym, a in zip(ann.sample, ann.symbol, aux)]
