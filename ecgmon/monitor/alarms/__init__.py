"""The alarm engine: bedside-style physiological and technical alarms of one ECG stream.

Modules: ``engine`` (per-stream orchestration), ``book`` (alarm lifecycle), ``beats``
(runs, patterns, rates, AF), ``fibrillation`` (VF/flutter waveform), ``morphology`` (QRS
template cues), ``technical`` (leads off, signal loss, clipping, noise), ``kinds``.
"""

from ecgmon.monitor.alarms.engine import AlarmEngine

__all__ = ["AlarmEngine"]
