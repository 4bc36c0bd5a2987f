"""The alarm catalogue: each kind's category, priority and how it reads on a screen.

Priorities after IEC 60601-2-27: the life-threatening arrhythmias are high; other
arrhythmias and limit violations medium or low; technical conditions medium or low.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    category: Literal["physiological", "technical"]
    priority: Literal["high", "medium", "low"]
    title: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("asystole", "physiological", "high", "Asystole"),
        Kind("vfib", "physiological", "high", "V-fib/flutter"),
        Kind("vtach", "physiological", "high", "V-tach"),
        Kind("brady", "physiological", "high", "Extreme brady"),
        Kind("tachy", "physiological", "high", "Extreme tachy"),
        Kind("hr_high", "physiological", "medium", "HR high"),
        Kind("hr_low", "physiological", "medium", "HR low"),
        Kind("afib", "physiological", "medium", "A-fib"),
        Kind("pvc_run", "physiological", "medium", "PVC run"),
        Kind("couplet", "physiological", "low", "Couplet"),
        Kind("bigeminy", "physiological", "low", "Bigeminy"),
        Kind("trigeminy", "physiological", "low", "Trigeminy"),
        Kind("leads_off", "technical", "medium", "Leads off"),
        Kind("signal_loss", "technical", "medium", "Signal loss"),
        Kind("noise", "technical", "low", "Noise: cannot analyse"),
        Kind("clipping", "technical", "low", "Signal clipped"),
    )
}
TECHNICAL = tuple(k for k, v in KINDS.items() if v.category == "technical")
