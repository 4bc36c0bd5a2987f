"""What a detector reports: a condition present or absent at a signal time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Observation:
    kind: str
    t: float
    present: bool
    onset_s: float | None = None
    text: str = ""
    value: float | None = None
    hold_s: float = 0.0
