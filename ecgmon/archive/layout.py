"""The WFDB multi-segment layout of one stream's archive: its signals and its segment list.

The archive uses WFDB's *variable layout*: a layout segment ``<name>_layout`` (a header of
length 0 naming the signals) comes first, then the segments in order, ``~`` null segments
standing for the time nothing was recorded. ``wfdb.rdrecord(<folder>/<name>)`` (and
PhysioNet's own programs) then read the whole stream as one record, gaps as NaN (WFDB's
invalid sample). The header is rewritten whole and replaced atomically at every change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path
import re

from ecgmon.archive.fsio import atomic_write_text

NULL = "~"  # WFDB's name of a null (gap) segment
SEGMENT_NAME = re.compile(r"^(?P<base>.+)_(?P<n>\d{6})$")


@dataclass(frozen=True)
class SignalSpec:
    """What the segments of one layout share: rate, channel names, units, gains, baselines.

    A stream whose spec changes (another rate, other channels) starts a new layout record
    in its folder; gains may differ between segments in the variable layout, but ecgmon
    keeps them fixed per stream so that a reader never sees the scale jump.
    """

    fs: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    gains: tuple[float, ...]
    baselines: tuple[int, ...]

    def compatible(self, other: "SignalSpec") -> bool:
        return self.fs == other.fs and self.channels == other.channels and self.units == other.units


def _fmt_fs(fs: float) -> str:
    return f"{fs:.12g}"


def _fmt_gain(gain: float) -> str:
    return f"{gain:.12g}"


@dataclass
class Layout:
    """The segment list of the multi-segment record ``folder/name``; ``first_sample`` is the
    stream-archive index of the first listed segment (retention drops leading segments, and
    the indices of what remains do not change)."""

    folder: Path
    name: str
    spec: SignalSpec
    entries: list[tuple[str, int]] = field(default_factory=list)  # (segment name or NULL, samples)
    first_sample: int = 0

    @property
    def layout_name(self) -> str:
        return f"{self.name}_layout"

    @property
    def header_path(self) -> Path:
        return self.folder / f"{self.name}.hea"

    @property
    def length(self) -> int:
        """Samples listed, gaps included."""
        return sum(n for _, n in self.entries)

    @property
    def end_sample(self) -> int:
        """Archive index one past the last listed sample."""
        return self.first_sample + self.length

    def segment_name(self, number: int) -> str:
        return f"{self.name}_{number:06d}"

    def next_number(self) -> int:
        """One past the highest segment number in use, listed or lying in the folder."""
        numbers = [0]
        for path in self.folder.glob(f"{self.name}_*.hea"):
            m = SEGMENT_NAME.match(path.stem)
            if m and m["base"] == self.name:
                numbers.append(int(m["n"]))
        return max(numbers) + 1

    def append(self, segment: str, samples: int) -> None:
        if samples <= 0:
            return
        if segment == NULL and self.entries and self.entries[-1][0] == NULL:
            # Two gaps in a row are one gap.
            self.entries[-1] = (NULL, self.entries[-1][1] + samples)
        else:
            self.entries.append((segment, samples))

    def drop(self, names: set[str]) -> None:
        """Remove segments ``names`` that lead the list (with the gaps among them), keeping
        the indices of the rest: ``first_sample`` moves up by what was removed."""
        while self.entries and (self.entries[0][0] in names or self.entries[0][0] == NULL):
            self.first_sample += self.entries.pop(0)[1]

    def render(self) -> str:
        spec = self.spec
        segs = [(self.layout_name, 0), *self.entries]
        lines = [f"{self.name}/{len(segs)} {len(spec.channels)} {_fmt_fs(spec.fs)} {self.length}"]
        lines += [f"{seg} {n}" for seg, n in segs]
        lines.append(f"# ecgmon archive layout first_sample={self.first_sample}")
        return "\n".join(lines) + "\n"

    def render_layout_segment(self) -> str:
        spec = self.spec
        lines = [f"{self.layout_name} {len(spec.channels)} {_fmt_fs(spec.fs)} 0"]
        for ch, unit, gain, base in zip(spec.channels, spec.units, spec.gains, spec.baselines):
            lines.append(f"~ 16 {_fmt_gain(gain)}({base})/{unit} 16 0 0 0 0 {ch}")
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        """Write the layout segment (once) and replace the layout header atomically."""
        seg = self.folder / f"{self.layout_name}.hea"
        if not seg.exists():
            atomic_write_text(seg, self.render_layout_segment())
        atomic_write_text(self.header_path, self.render())

    @classmethod
    def load(cls, folder: Path, name: str) -> "Layout":
        """Read ``folder/name.hea`` and its layout segment; ValueError if either is malformed."""
        head = (folder / f"{name}.hea").read_text(encoding="utf-8").splitlines()
        seg_head = (folder / f"{name}_layout.hea").read_text(encoding="utf-8").splitlines()
        spec = _parse_layout_segment(seg_head)
        entries: list[tuple[str, int]] = []
        first = 0
        lines = [ln for ln in head if ln.strip()]
        if not lines or not lines[0].startswith(f"{name}/"):
            raise ValueError(f"{folder / name}.hea is not a multi-segment header of {name}")
        for ln in lines[1:]:
            if ln.startswith("#"):
                m = re.search(r"first_sample=(\d+)", ln)
                if m:
                    first = int(m[1])
                continue
            seg, n = ln.split()
            if seg == f"{name}_layout":
                continue
            entries.append((seg, int(n)))
        return cls(folder, name, spec, entries, first)


def _parse_layout_segment(lines: list[str]) -> SignalSpec:
    rec = lines[0].split()
    fs = float(rec[2].split("/")[0])
    if not math.isfinite(fs) or fs <= 0:
        raise ValueError(f"bad sampling frequency {rec[2]!r}")
    channels, units, gains, bases = [], [], [], []
    for ln in lines[1:]:
        if ln.startswith("#") or not ln.strip():
            continue
        parts = ln.split(maxsplit=8)
        m = re.match(r"^([-\d.eE+]+)(?:\((-?\d+)\))?(?:/(.*))?$", parts[2])
        if m is None:
            raise ValueError(f"bad gain field {parts[2]!r}")
        gains.append(float(m[1]))
        bases.append(int(m[2] or 0))
        units.append(m[3] or "mV")
        channels.append(parts[8] if len(parts) > 8 else f"ch{len(channels)}")
    return SignalSpec(fs, tuple(channels), tuple(units), tuple(gains), tuple(bases))
