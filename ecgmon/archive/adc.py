"""The gains a source's samples were digitised with, so the archive stores them unchanged:
a replayed WFDB record keeps its header's gain and baseline (its digital samples come back
exactly); a source may also say so itself with an ``adc`` attribute. Read on the writer's
thread (it opens a header), never on the pipeline's."""

from __future__ import annotations

import wfdb

Adc = list[tuple[float, int, str]]  # per channel: (units per physical unit, baseline, unit)


def source_adc(source: object) -> Adc | None:
    """The source's per-channel digitisation, or None when it does not know one."""
    own = getattr(source, "adc", None)
    if own is not None:
        return list(own)
    record = getattr(source, "record", None)
    columns = getattr(source, "columns", None)
    path = getattr(record, "path", None)
    if path is None or columns is None:
        return None
    try:
        header = wfdb.rdheader(str(path))
    except Exception:  # the source read it already; a failure here only costs the exact gains
        return None
    gains, baselines, units = (getattr(header, k, None) for k in ("adc_gain", "baseline", "units"))
    if not gains or not baselines:
        return None
    try:
        return [(float(gains[c]) or 200.0, int(baselines[c]), str((units or [])[c] or "mV")) for c in columns]
    except (IndexError, TypeError, ValueError):
        return None
