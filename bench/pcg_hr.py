"""PCG heart rate: the live rate of the heart-sound pipeline against an offline whole-recording
estimate, on every pcg2016 recording, and how many recordings the quality index calls good.

    nice -n 10 .venv/bin/python bench/pcg_hr.py [--data DIR] [--out bench/results/pcg_hr]

Each recording is fed to ``PcgPipeline`` in 0.1 s chunks, as the daemon would. Its live rate is
the median of the rates it published after the first 5 s; the recording is "good" when the
median of the quality indices it published after the first 5 s reaches ``[audio] min_quality``.
The offline estimate is the classic one (Schmidt et al. 2010, Springer et al. 2016): the
autocorrelation of the whole recording's zero-phase homomorphic envelope, whose highest peak
at a lag of 0.4-2 s is one cardiac cycle. Agreement: within 5 bpm.

The live rate and the offline estimate share a principle (the envelope repeats once per cycle)
but not their means: the live one sees causally filtered envelope, 10 s at a time, as it
arrives, and takes the shortest autocorrelation peak within 85 % of the highest; the offline
one sees the whole recording through zero-phase filters and takes the highest peak. So this
measures whether the live rate is what a careful look at the whole recording says, not truth
(pcg2016 has no beat annotations); where they disagree either can be wrong.

How the constants were chosen: the quality index's on the first 80 recordings of training-a.
The live rate first came from the times of the detected sounds (89.7 % agreement on all
databases; its 150 bpm ceiling was set after a run over all of them). Plots of its
disagreements showed missed sounds turning into cycles of 1.5 or 2 beats; the envelope
autocorrelation that replaced it was chosen and its constants fixed on training-a alone
(97.8 % there, was 95.0 %), then training-b, -d and -e were measured once.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy import signal
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.chunk import Chunk  # noqa: E402
from ecgmon.config import Config  # noqa: E402
from ecgmon.monitor.pcg_pipeline import PcgPipeline  # noqa: E402
from ecgmon.schema import PcgMessage  # noqa: E402

FS = 2000
CHUNK = 200  # 0.1 s
WARMUP_S = 5.0
AGREE_BPM = 5.0
OFFLINE_LAGS_S = (0.4, 2.0)
TUNED_ON = ("quality index: training-a (first 80 recordings); live rate: training-a, except its 150 bpm "
            "ceiling (pcg_rate.MIN_CYCLE_S), set after a run over all databases")


def offline_rate(x: np.ndarray, fs: float = FS) -> float:
    """Whole-recording heart rate from the autocorrelation of the homomorphic envelope."""
    sos = signal.butter(4, [25, 400], "bandpass", fs=fs, output="sos")
    y = signal.sosfiltfilt(sos, x)
    lp = signal.butter(1, 8, fs=fs, output="sos")
    env = np.exp(signal.sosfiltfilt(lp, np.log(np.abs(signal.hilbert(y)) + 1e-7)))
    env = signal.resample_poly(env, 1, 40)  # 50 Hz
    env = env - env.mean()
    ac = signal.correlate(env, env, "full", method="fft")[env.size - 1 :]
    lo, hi = int(OFFLINE_LAGS_S[0] * 50), int(OFFLINE_LAGS_S[1] * 50)
    lag = lo + int(np.argmax(ac[lo : hi + 1]))
    return 60.0 / (lag / 50.0)


def live(x: np.ndarray, config: Config) -> tuple[float | None, float]:
    """The pipeline's live rate and quality over a recording (medians after the warm-up)."""
    pipe = PcgPipeline("bench", FS, config)
    rates: list[float] = []
    quality: list[float] = []
    for start in range(0, x.size, CHUNK):
        block = x[start : start + CHUNK].reshape(-1, 1)
        for msg in pipe.feed(Chunk("bench", FS, ("pcg",), start, block)):
            if isinstance(msg, PcgMessage) and msg.time_s + 0.5 >= WARMUP_S:
                quality.append(msg.quality or 0.0)
                if msg.hr_bpm is not None:
                    rates.append(msg.hr_bpm)
    return (float(np.median(rates)) if rates else None), (float(np.median(quality)) if quality else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("ECGMON_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--data", type=Path, default=default / "pcg2016")
    ap.add_argument("--out", type=Path, default=Path("bench/results/pcg_hr"))
    args = ap.parse_args()
    config = Config()
    files = sorted(args.data.glob("training-*/*.flac")) + sorted(args.data.glob("training-*/*.wav"))
    if not files:
        print(f"no recordings under {args.data}", file=sys.stderr)
        return 2
    rows = []
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("recordings", total=len(files))
        for path in files:
            x, fs = sf.read(path, dtype="float32")
            if x.ndim > 1:
                x = x[:, 0]
            if fs != FS:
                import soxr

                x = soxr.resample(x, fs, FS)
            rate, q = live(x, config)
            ref = offline_rate(x.astype(np.float64))
            rows.append({"db": path.parent.name, "recording": path.stem, "live_bpm": rate,
                         "offline_bpm": round(ref, 2), "quality": round(q, 3),
                         "good": q >= config.audio.min_quality,
                         "agree": rate is not None and abs(rate - ref) <= AGREE_BPM})
            progress.advance(task)

    def summary(sel: list[dict]) -> dict:
        good = [r for r in sel if r["good"]]
        agree = sum(r["agree"] for r in good)
        return {"recordings": len(sel), "good": len(good),
                "agree_good": agree, "agree_fraction_good": round(agree / len(good), 4) if good else None,
                "agree_fraction_all": round(sum(r["agree"] for r in sel) / len(sel), 4)}

    dbs = sorted({r["db"] for r in rows})
    result = {"command": "nice -n 10 .venv/bin/python bench/pcg_hr.py", "agree_bpm": AGREE_BPM,
              "min_quality": config.audio.min_quality, "tuned_on": TUNED_ON,
              "all": summary(rows), "by_database": {db: summary([r for r in rows if r["db"] == db]) for db in dbs},
              "held_out": summary([r for r in rows if r["db"] != "training-a"]), "recordings": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pcg_hr.json").write_text(json.dumps(result, indent=1))
    _plot(rows, args.out / "pcg_hr.png")

    table = Table(title=f"live vs offline heart rate, within {AGREE_BPM:g} bpm, on recordings of quality >= "
                        f"{config.audio.min_quality:g}")
    for col in ("set", "recordings", "good", "agree (good)", "agree (all)"):
        table.add_column(col)
    for name, s in [*result["by_database"].items(), ("held out (b, d, e)", result["held_out"]), ("all", result["all"])]:
        table.add_row(name, str(s["recordings"]), str(s["good"]),
                      f"{s['agree_good']} ({100 * (s['agree_fraction_good'] or 0):.1f} %)",
                      f"{100 * s['agree_fraction_all']:.1f} %")
    Console().print(table)
    print(f"wrote {args.out / 'pcg_hr.json'} and {args.out / 'pcg_hr.png'}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for good, color, label in ((False, "0.7", "quality below threshold"), (True, "C0", "good quality")):
        sel = [r for r in rows if r["good"] == good and r["live_bpm"] is not None]
        ax.scatter([r["offline_bpm"] for r in sel], [r["live_bpm"] for r in sel], s=6, c=color, label=label)
    ax.plot([30, 160], [30, 160], "k-", lw=0.8)
    for d in (-AGREE_BPM, AGREE_BPM):
        ax.plot([30, 160], [30 + d, 160 + d], "k:", lw=0.8)
    ax.set_xlabel("offline whole-recording rate (bpm)")
    ax.set_ylabel("live pipeline rate (bpm)")
    ax.set_title("pcg2016: live heart rate from heart sounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
