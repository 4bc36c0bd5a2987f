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
        # A multi-segment record (an archive replayed): the gains its layout segment names.
        seg = layout_adc(str(path))
        return [seg[c] for c in columns] if seg is not None and max(columns) < len(seg) else None
    try:
        return [(float(gains[c]) or 200.0, int(baselines[c]), str((units or [])[c] or "mV")) for c in columns]
    except (IndexError, TypeError, ValueError):
        return None


def layout_adc(base: str) -> Adc | None:
    """The gains of an ecgmon archive replayed as a record: its layout segment's."""
    try:
        header = wfdb.rdheader(f"{base}_layout")
    except Exception:
        return None
    if not header.adc_gain:
        return None
    return [(float(g), int(b), str(u or "mV")) for g, b, u in zip(header.adc_gain, header.baseline, header.units)]
