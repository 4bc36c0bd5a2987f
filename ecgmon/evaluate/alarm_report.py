"""The report of ``ecgmon evaluate alarms``: Rich tables and a PNG of the onset-to-alarm
delays and false-alarm rates per alarm kind (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from ecgmon.evaluate.alarms import SCORED

BLOCKS = (("all", "all records"), ("held_out", "records the beat model never trained on"))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render(result: dict) -> list:
    """Per-record counts, per-kind tables over all and held-out records, the acceptance."""
    from rich.table import Table
    from rich.text import Text

    per = Table(title="Per record: detected/episodes, false alarms (f), suppressed (s)",
                caption=f"* the beat model trained on this record; classified by: {result['mode']}")
    per.add_column("Record")
    for k in SCORED:
        per.add_column(k, justify="right")
    if result["noise"]:
        per.add_column("noise cover %", justify="right")
    for r in result["per_record"]:
        row = [r["record"] + (" *" if r["trained_on"] else "")]
        for k in SCORED:
            s = r["kinds"][k]
            cell = f"{s['detected']}/{s['episodes']}" if s["episodes"] else ""
            cell += f" f{s['false_alarms']}" if s["false_alarms"] else ""
            cell += f" s{s['suppressed']}" if s["suppressed"] else ""
            row.append(cell.strip())
        if result["noise"]:
            row.append(_pct(r["noise_coverage"]))
        per.add_row(*row)
    out: list = [per]
    for key, title in BLOCKS:
        block = result[key]
        if not block["records"]:
            out.append(f"No {title}.")
            continue
        t = Table(title=f"{title.capitalize()} ({len(block['records'])}, {block['hours']:.2f} h)")
        for col in ("Alarm", "Episodes", "Found", "Se %", "False", "False/h", "Suppr.", "Delay med s",
                    "Delay p90 s"):
            t.add_column(col, justify="left" if col == "Alarm" else "right")
        for k, s in block["kinds"].items():
            t.add_row(k, str(s["episodes"]), str(s["detected"]), _pct(s["sensitivity"]), str(s["false_alarms"]),
                      _num(s["false_per_hour"], 2), str(s["suppressed"]), _num(s["delay_median_s"]),
                      _num(s["delay_p90_s"]))
        out.append(t)
    line = Text("Acceptance (all records): ")
    for name, c in result["acceptance"].items():
        v = c["value"]
        line.append(f"{name} {_num(v, 2) if isinstance(v, float) else v} ")
        line.append("pass" if c["pass"] else "FAIL", style="green" if c["pass"] else "bold red")
        line.append("; ")
    out.append(line)
    return out


def plot(result: dict, path: Path) -> Path:
    """Delays per kind (each detected episode a dot, the median a bar) beside false alarms
    per hour, over all records and over the held-out ones."""
    fig = Figure(figsize=(11, 4.5))
    ax_d, ax_f = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)  # jitter only spreads the dots; the same picture every run
    y = np.arange(len(SCORED))
    for off, (key, title), colour in ((-0.15, BLOCKS[0], "tab:blue"), (0.15, BLOCKS[1], "tab:orange")):
        kinds = result[key]["kinds"]
        for i, k in enumerate(SCORED):
            d = np.asarray(kinds[k]["delays_s"], dtype=float)
            if d.size:
                ax_d.scatter(d, i + off + rng.uniform(-0.06, 0.06, d.size), s=10, color=colour, alpha=0.6,
                             label=title)
                ax_d.plot([np.median(d)] * 2, [i + off - 0.12, i + off + 0.12], color="black", lw=2)
        fph = [kinds[k]["false_per_hour"] or 0.0 for k in SCORED]
        ax_f.barh(y + off, fph, height=0.3, color=colour, label=title)
    # One legend entry per block, however many kinds drew dots.
    unique = {label: h for h, label in zip(*ax_d.get_legend_handles_labels())}
    ax_d.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax_d.axvline(10.0, color="grey", ls="--", lw=1)
    ax_d.set_yticks(y, SCORED)
    ax_d.set_xlabel("onset-to-alarm delay, s (bar: median; dashed: 10 s)")
    ax_d.set_title("Delay per detected episode")
    ax_f.axvline(1.0, color="grey", ls="--", lw=1)
    ax_f.set_yticks(y, SCORED)
    ax_f.set_xlabel("false alarms per hour (dashed: 1/h)")
    ax_f.set_title("False alarms")
    ax_f.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: bars fill the axes
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path
