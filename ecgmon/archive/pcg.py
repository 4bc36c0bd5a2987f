"""One heart-sound stream's archive: the stethoscope audio as FLAC segments (16-bit, at the
stream's rate) in ``<stream>/pcg/``, each beside a JSON file holding what the daemon found in
it: the envelope messages (envelope, S1 and S2 times, heart rate, quality) and the model's
verdicts that were published while the segment was open.

A segment is a complete file: FLAC and JSON are written to scratch names, fsynced and
renamed, the JSON last (a JSON file means its FLAC is whole). A gap in the audio (a dropped
chunk, the daemon down) simply closes the segment: each names the stream index and the wall
time of its first sample, so the gap is where one segment's end and the next start differ.
"""

from __future__ import annotations

import json
from pathlib import Path
import re
import shutil
import time

import numpy as np
import soundfile as sf

from ecgmon.archive.fsio import TMP_DIR, publish_files, scratch_dir

PCG_DIR = "pcg"
_NAME = re.compile(r"_pcg_(\d{6})\.json$")


class PcgArchive:
    """Archives one heart-sound stream into ``root/<stream>/pcg``."""

    def __init__(self, root: Path, stream: str, fs: float, segment_s: float, run: str) -> None:
        self.stream = stream
        self.folder = root / stream / PCG_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.folder / TMP_DIR, ignore_errors=True)
        self.fs = fs
        self.run = run
        self.segment_samples = max(1, round(segment_s * fs))
        used = [int(m[1]) for p in self.folder.glob("*.json") if (m := _NAME.search(p.name))]
        self.number = max(used, default=0) + 1
        self.expected: int | None = None
        self._buf: list[np.ndarray] = []
        self._buf_n = 0
        self._start = 0
        self._wall = 0.0
        self._messages: list[dict] = []
        self.bytes_written = 0

    def add_samples(self, start: int, samples: np.ndarray, received: float) -> None:
        """Audio samples (channel 0 is the stethoscope), stream indices ``start`` …"""
        x = samples[:, 0]
        if self.expected is not None and start != self.expected:
            if start < self.expected:  # overlap: keep only what is new
                x = x[self.expected - start:]
                start = self.expected
            else:
                self.close_segment()  # a gap ends the segment
        self.expected = start + x.shape[0]
        pos = 0
        while pos < x.shape[0]:
            if self._buf_n == 0:
                self._start = start + pos
                self._wall = received - (x.shape[0] - pos) / self.fs
            take = min(self.segment_samples - self._buf_n, x.shape[0] - pos)
            self._buf.append(x[pos : pos + take])
            self._buf_n += take
            pos += take
            if self._buf_n >= self.segment_samples:
                self.close_segment()

    def add_message(self, message: dict) -> None:
        """A ``pcg`` or ``pcg_class`` message (as JSON values), kept with the open segment."""
        self._messages.append(message)

    def close_segment(self) -> None:
        if self._buf_n == 0:
            return
        audio = np.concatenate(self._buf)
        msgs, self._messages = self._messages, []
        self._buf, self._buf_n = [], 0
        name = f"{self.stream}_pcg_{self.number:06d}"
        self.number += 1
        scratch = scratch_dir(self.folder)
        # FLAC holds integers: 16-bit is what stethoscopes and the PhysioNet/CinC 2016 recordings give.
        sf.write(scratch / f"{name}.flac", np.clip(audio, -1.0, 1.0), int(round(self.fs)), format="FLAC",
                 subtype="PCM_16")
        meta = {
            "stream": self.stream, "fs": self.fs, "samples": int(audio.shape[0]), "stream_start": self._start,
            "start_wall": round(self._wall, 3), "closed_wall": round(time.time(), 3), "run": self.run,
            "audio": f"{name}.flac",
            "pcg": [m for m in msgs if m.get("kind") == "pcg"],
            "pcg_class": [m for m in msgs if m.get("kind") == "pcg_class"],
        }
        (scratch / f"{name}.json").write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
        publish_files(scratch, self.folder, [f"{name}.flac", f"{name}.json"])
        self.bytes_written += sum((self.folder / f).stat().st_size for f in (f"{name}.flac", f"{name}.json"))

    def close(self) -> None:
        self.close_segment()


def pcg_segments(folder: Path) -> list[dict]:
    """The segments of ``<stream>/pcg`` in order: each JSON file's content."""
    out = []
    for path in sorted(folder.glob("*_pcg_*.json")):
        out.append(json.loads(path.read_text(encoding="utf-8")))
    return out
