"""`ecgmon evaluate alarms`: reference episodes from MIT-BIH annotations, scoring of alarm
spans on hand-made episodes, nstdb-style noise at a given SNR, and a slice of record 207
through the whole pipeline with the shipped models (its ventricular flutter found)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgmon.cli import main
from ecgmon.config import AlarmsConfig, Config, DataConfig
from ecgmon.evaluate.alarms import (
    AlarmSpan, Episode, acceptance, alarm_spans, beat_episodes, evaluate_record, reference_episodes, rhythm_episodes, score,
    summary, ventricular_runs,
)
from ecgmon.evaluate.alarm_report import plot, render
from ecgmon.monitor.model_set import load_models
from ecgmon.evaluate.noise_stress import NoiseStress, add_noise, noise_mask
from ecgmon.monitor.alarms.book import AlarmBook
from ecgmon.replay.records import load_record

FS = 360.0


def test_rhythm_episodes_keep_vt_of_five_beats_and_flutter() -> None:
    # (N, then (VT with 4 beats, (N, (VT with 6 beats, (VFL, (N
    samples, symbols, aux = [], [], []

    def mark(t: float, name: str) -> None:
        samples.append(round(t * FS)); symbols.append("+"); aux.append(name)

    def beats(t0: float, n: int, rr: float, sym: str) -> None:
        for i in range(n):
            samples.append(round((t0 + i * rr) * FS)); symbols.append(sym); aux.append("")

    mark(0, "(N"); beats(0.5, 10, 0.8, "N")
    mark(9.0, "(VT"); beats(9.1, 4, 0.4, "V")
    mark(10.8, "(N"); beats(11.0, 5, 0.8, "N")
    mark(15.0, "(VT"); beats(15.1, 6, 0.4, "V")
    mark(17.6, "(VFL"); mark(25.0, "(N"); beats(25.2, 5, 0.8, "N")
    eps = rhythm_episodes(np.array(samples), symbols, aux, FS, 30.0)
    kinds = [(e.kind, round(e.onset_s, 1), e.beats) for e in eps]
    assert ("vtach", 15.0, 6) in kinds and ("vtach_any", 9.0, 4) in kinds
    assert not [k for k in kinds if k[0] == "vtach" and k[1] == 9.0]  # 4 beats: not an episode
    assert ("vfib", 17.6, 0) in kinds


def test_runs_of_annotated_v_beats_are_vtach_where_no_rhythm_label_covers_them() -> None:
    cfg = AlarmsConfig()
    rr = [0.8] * 5 + [0.4] * 5 + [0.8] * 5 + [0.4] * 3 + [0.8] * 5 + [0.7] * 6 + [0.8] * 5
    t = np.cumsum(rr)
    v = np.array([False] * 5 + [True] * 5 + [False] * 5 + [True] * 3 + [False] * 5 + [True] * 6 + [False] * 5)
    eps = [(e.kind, round(e.onset_s, 1), e.beats) for e in ventricular_runs(t, v, cfg)]
    # 5 V at 150 bpm: V-tach; 3 V: a short run only; 6 V at 86 bpm: slower than vtach_bpm.
    assert eps == [("vtach_any", round(t[5], 1), 5), ("vtach", round(t[5], 1), 5),
                   ("vtach_any", round(t[15], 1), 3), ("vtach_any", round(t[23], 1), 6)]
    # A run the annotators labelled (VT is that episode already.
    labelled = [Episode("vtach_any", t[5] - 0.1, t[9] + 0.1, 5), Episode("vtach", t[5] - 0.1, t[9] + 0.1, 5)]
    assert [e.onset_s for e in ventricular_runs(t, v, cfg, labelled)] == [t[15], t[23]]


def test_svdb_runs_of_v_are_vtach_episodes_and_mitdb_keeps_its_labelled_ones(data_dir) -> None:
    data = DataConfig(folder=str(data_dir), cache="/nonexistent")
    # SVDB marks no rhythms: svdb 855's run of 8 V beats at 130 bpm is a V-tach episode.
    found = [(e.kind, round(e.onset_s), e.beats) for e in reference_episodes(load_record("svdb:855", data), AlarmsConfig())
             if e.kind == "vtach"]
    assert found == [("vtach", 105, 8)]
    # MIT-BIH's (VT labels already cover its runs: 205 keeps its four episodes.
    assert len([e for e in reference_episodes(load_record("mitdb:205", data), AlarmsConfig()) if e.kind == "vtach"]) == 4


def test_beat_episodes_asystole_brady_tachy_but_not_inside_flutter() -> None:
    cfg = AlarmsConfig()
    t = np.concatenate([np.arange(0, 20, 0.8), 20 + 5.0 + np.arange(0, 10, 2.0), 36 + np.arange(0, 10, 0.35)])
    eps = beat_episodes(t, cfg)
    kinds = {e.kind for e in eps}
    assert {"asystole", "brady", "tachy"} <= kinds
    gap = [e for e in eps if e.kind == "asystole"]
    assert gap[0].onset_s == pytest.approx(t[24]) and gap[0].end_s == pytest.approx(25.0 + 0.2, abs=0.3)
    # The same pause inside annotated flutter is the flutter, not asystole.
    flutter = [Episode("vfib", 19.0, 26.0)]
    assert not [e for e in beat_episodes(t, cfg, flutter) if e.kind == "asystole"]


def test_score_detection_delay_false_and_suppressed() -> None:
    episodes = [Episode("vtach", 100.0, 110.0, 12), Episode("vtach", 300.0, 303.0, 6),
                Episode("vfib", 500.0, 520.0), Episode("vtach_any", 700.0, 701.0, 3)]
    spans = [
        AlarmSpan("vtach", 102.5, 112.0, False),  # detected 2.5 s after onset
        AlarmSpan("vtach", 306.0, 309.0, False),  # within the tolerance after the end: detected
        AlarmSpan("vtach", 505.0, 515.0, False),  # V-tach in flutter: not false
        AlarmSpan("vtach", 700.5, 702.0, False),  # a short annotated run: not false
        AlarmSpan("vtach", 900.0, 905.0, False),  # nothing there: false
        AlarmSpan("vtach", 950.0, 955.0, True),  # suppressed: neither false nor a detection
        AlarmSpan("vfib", 520.0 + 10.0, 540.0, False),  # after the tolerance: false, episode missed
    ]
    s = score(episodes, spans)
    assert (s["vtach"].episodes, s["vtach"].detected, s["vtach"].false_alarms) == (2, 2, 1)
    assert s["vtach"].delays_s == [2.5, 6.0] and s["vtach"].false_s == [900.0]
    assert s["vtach"].suppressed == 1 and s["vtach"].alarms == 5
    assert (s["vfib"].detected, s["vfib"].false_alarms, s["vfib"].missed_s) == (0, 1, [500.0])
    assert s["asystole"].sensitivity is None


def test_an_alarm_raised_suppressed_counts_from_when_it_was_annunciated() -> None:
    """A V-tach alarm raised in noise at 102 s and annunciated only at 118 s, once the noise
    was gone, told nobody before 118 s: its delay is 18 s, and an episode that ended before
    it (with the tolerance) was missed, not found 2 s after onset."""
    book = AlarmBook("bed7", clear_s=5.0, latch=[])
    msgs = []
    for t in (102.0, 106.0, 110.0, 114.0):
        msgs += book.observe("vtach", t, True, suppressed=True)
    msgs += book.observe("vtach", 118.0, True)
    msgs += book.tick(130.0)
    msgs += book.observe("vfib", 200.0, True, suppressed=True) + book.tick(210.0)  # never annunciated
    spans = alarm_spans(msgs, 300.0)
    assert [(s.kind, s.start_s, s.cleared_s, s.suppressed) for s in spans] == [
        ("vtach", 118.0, 123.0, False), ("vfib", 200.0, 205.0, True)]
    found = score([Episode("vtach", 100.0, 125.0, 30)], spans)["vtach"]
    assert found.detected == 1 and found.delays_s == [18.0]
    missed = score([Episode("vtach", 100.0, 110.0, 12)], spans)["vtach"]
    assert missed.detected == 0 and missed.false_alarms == 1 and missed.false_s == [118.0]


def test_reference_of_a_slice_starts_in_the_rhythm_in_effect(data_dir) -> None:
    rec = load_record("mitdb:207", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    # 45-70 s: inside the flutter that began at 40.7 s ('[', then (VFL at 40.8 s), then (N at
    # 51.1 s and flutter again from '[' at 54.76 s ((VFL at 54.9 s).
    eps = reference_episodes(rec, AlarmsConfig(), (round(45 * FS), round(70 * FS)))
    vf = [(round(e.onset_s, 1), round(e.end_s, 1)) for e in eps if e.kind == "vfib"]
    assert vf == [(0.0, 6.1), (9.8, 15.6)]
    # Cut inside the bracketed span only (51.05 s: after ']' at 51.0 s, before (N at 51.1 s) and
    # inside the second one (58 s: '[' at 54.76 s is before the slice, its ']' at 60.6 s in it).
    eps = reference_episodes(rec, AlarmsConfig(), (round(58 * FS), round(65 * FS)))
    assert [(round(e.onset_s, 1), round(e.end_s, 1)) for e in eps if e.kind == "vfib"] == [(0.0, 2.6)]


def test_bracketed_flutter_is_a_vf_episode_and_its_gap_no_asystole() -> None:
    """CUDB style: '[' and ']' beat annotations only, no rhythm labels, no beats inside."""
    samples, symbols, aux = [], [], []

    def at(t: float, sym: str) -> None:
        samples.append(round(t * FS)); symbols.append(sym); aux.append("")

    for i in range(12):
        at(0.5 + i * 0.8, "N")  # beats to 9.3 s
    at(9.6, "["); at(30.0, "]")
    for i in range(3):
        at(30.4 + i * 0.8, "N")  # 30.4 .. 32.0 s, then a 6 s pause: asystole after the VF
    for i in range(5):
        at(38.0 + i * 0.8, "N")
    at(45.0, "[")  # never closed: VF to the end
    eps = rhythm_episodes(np.array(samples), symbols, aux, FS, 60.0)
    vf = [(round(e.onset_s, 1), round(e.end_s, 1)) for e in eps if e.kind == "vfib"]
    assert vf == [(9.6, 30.0), (45.0, 60.0)]
    beat_t = np.array([s / FS for s, sym in zip(samples, symbols) if sym == "N"])
    found = beat_episodes(beat_t, AlarmsConfig(), eps)
    assert [(e.kind, round(e.onset_s, 1), round(e.end_s, 1)) for e in found if e.kind in ("asystole", "brady")] == [
        ("asystole", 32.0, 38.0)
    ]
    # Without the brackets the 20 s without beats would be asystole (and slow beats brady).
    bare = beat_episodes(beat_t, AlarmsConfig())
    assert ("asystole", 9.3, 30.4) in [(e.kind, round(e.onset_s, 1), round(e.end_s, 1)) for e in bare]


def test_207_vf_episodes_from_brackets_and_rhythm_labels(data_dir) -> None:
    rec = load_record("mitdb:207", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    eps = reference_episodes(rec, AlarmsConfig())
    vf = [(round(e.onset_s, 1), round(e.end_s, 1)) for e in eps if e.kind == "vfib"]
    # '[' opens each span a little before its (VFL label; the six flutter episodes of 207.
    assert vf == [(40.7, 51.1), (54.8, 60.6), (242.1, 246.6), (247.9, 261.7), (269.5, 281.1), (1540.8, 1639.3)]
    inside = [e for e in eps if e.kind in ("asystole", "brady") and any(a < e.end_s and e.onset_s < b for a, b in vf)]
    assert not inside


def test_cudb_vf_episodes_from_brackets_alone(data_dir) -> None:
    """cu04: four bracketed VF spans (no rhythm labels); no asystole or brady inside them."""
    rec = load_record("cudb:cu04", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    eps = reference_episodes(rec, AlarmsConfig())
    vf = [(round(e.onset_s, 1), round(e.end_s, 1)) for e in eps if e.kind == "vfib"]
    assert vf == [(155.3, 211.0), (223.8, 243.5), (254.6, 345.9), (369.7, 475.2)]
    assert not [e for e in eps if e.kind in ("asystole", "brady")]
    # cu12: VF to 455.6 s, then 6 s without a beat: asystole from the end of the VF.
    eps = reference_episodes(load_record("cudb:cu12", DataConfig(folder=str(data_dir), cache="/nonexistent")), AlarmsConfig())
    assert [(e.kind, round(e.onset_s, 1)) for e in eps if e.kind in ("vfib", "asystole")] == [
        ("vfib", 261.3), ("asystole", 455.6)
    ]


def test_noise_at_the_asked_snr_in_alternating_segments(data_dir) -> None:
    data = DataConfig(folder=str(data_dir), cache="/nonexistent")
    rec = load_record("mitdb:118", data)
    n = round(12 * 60 * FS)
    mask = noise_mask(n, FS)
    t_on = np.flatnonzero(mask) / FS
    assert t_on[0] == pytest.approx(300.0) and not mask[round(430 * FS)] and mask[round(545 * FS)]
    for snr in (6.0, 0.0):
        noisy, got_mask = add_noise(rec.signal[:n], rec.ann_samples[rec.ann_samples < n], FS, NoiseStress("em", snr), data)
        np.testing.assert_array_equal(got_mask, mask)
        added = (noisy - rec.signal[:n])[:, 0]
        assert not added[~mask].any()
        r = rec.ann_samples[(rec.ann_samples > 18) & (rec.ann_samples < n - 18)]
        ptp = np.median([np.ptp(rec.signal[k - 18 : k + 18, 0]) for k in r[:: max(1, r.size // 500)]])
        measured = 10 * np.log10((ptp**2 / 8) / np.mean(added[mask] ** 2))
        assert measured == pytest.approx(snr, abs=0.05)


def test_noise_taken_from_earlier_in_the_noise_record_never_overlaps_the_test_noise(data_dir) -> None:
    """bench/vf_detector.py --noise trains on copies whose noise comes from 120 s earlier in the
    nstdb record: same segments, same SNR, but the noise of the off-segments, which the copies
    `evaluate alarms --noise` makes (offset 0) never get."""
    data = DataConfig(folder=str(data_dir), cache="/nonexistent")
    rec = load_record("mitdb:118", data)
    n = round(12 * 60 * FS)
    sig, r = rec.signal[:n], rec.ann_samples[rec.ann_samples < n]
    noise = load_record("nstdb:ma", data, annotations=False).signal[:, 0].astype(np.float64)
    shift = round(120 * FS)
    test, mask = add_noise(sig, r, FS, NoiseStress("ma", 0.0), data)
    train, mask2 = add_noise(sig, r, FS, NoiseStress("ma", 0.0), data, noise_offset_s=120.0)
    np.testing.assert_array_equal(mask, mask2)
    on = np.flatnonzero(mask)
    for noisy, source in ((test, on), (train, on - shift)):
        added = (noisy - sig)[on, 0].astype(np.float64)
        assert np.corrcoef(added, noise[source])[0, 1] > 0.999
    assert not np.isin(on - shift, on).any()


@pytest.fixture(scope="module")
def models():
    loaded, errors = load_models(Config().models)
    assert not errors and "beat" in loaded
    return loaded


def test_a_slice_of_207_through_the_pipeline_finds_its_flutter(models, tmp_path) -> None:
    config = Config()
    result = evaluate_record("mitdb:207", config, models, span_s=(0.0, 300.0))
    vf = result.scores["vfib"]
    assert vf.episodes == 5 and vf.detected >= 4  # 40.8, 54.9, 242.3, 248.1, 269.6 s
    assert all(0.0 <= d <= 10.0 for d in vf.delays_s)
    trained = "207" in [str(r) for r in models["beat"].card["training"]["records"]]
    assert result.trained_on == trained and result.hours == pytest.approx(300 / 3600)
    report = summary([result], models)
    assert report["beat_model"]["sha256"] == models["beat"].card["sha256"]
    assert report["held_out"]["records"] == ([] if trained else ["mitdb:207"])
    assert report["acceptance"]["vfib_detected_in_207"]["pass"]
    assert report["all"]["kinds"]["vfib"]["delays_s"] == sorted(vf.delays_s)
    png = plot(report, tmp_path / "alarms.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(render(report)) == 4


def test_acceptance_reads_the_issue_criteria(models) -> None:
    from ecgmon.evaluate.alarms import KindScore, RecordAlarms

    def rec(name: str, vt: tuple[int, int, int], vf_found: int) -> RecordAlarms:
        scores = {k: KindScore() for k in ("vtach", "vfib", "afib", "asystole", "brady", "tachy")}
        scores["vtach"] = KindScore(episodes=vt[0], detected=vt[1], false_alarms=vt[2], delays_s=[3.0] * vt[1])
        scores["vfib"] = KindScore(episodes=2, detected=vf_found, delays_s=[20.0] * vf_found)
        return RecordAlarms(name, 1.0, False, scores)

    ok = acceptance([rec("mitdb:207", (0, 0, 0), 2), rec("mitdb:203", (10, 9, 1), 0)])
    assert all(c["pass"] for c in ok.values())
    bad = acceptance([rec("mitdb:207", (0, 0, 0), 0), rec("mitdb:203", (10, 8, 3), 0)])
    assert not bad["vtach_sensitivity"]["pass"] and not bad["vfib_detected_in_207"]["pass"]
    assert not bad["vtach_false_per_hour"]["pass"] and bad["vtach_false_per_hour"]["value"] == 1.5


def test_cli_unknown_record_is_one_error_line(tmp_path, capsys) -> None:
    assert main(["evaluate", "alarms", "nosuchdb:1", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "nosuchdb:1" in err and "Traceback" not in err


def test_cross_validated_alarms_classify_each_record_by_the_fold_that_held_it_out(tmp_path) -> None:
    # The shipped beat model's fold models (ecgmon/models/weights/beat-cnn-bilstm.folds/).
    report = tmp_path / "alarms.json"
    assert main(["evaluate", "alarms", "mitdb:119", "mitdb:100", "--cross-validated", "--out", str(tmp_path),
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["mode"].startswith("cross-validated") and result["command"]["cross_validated"]
    held = {r: f["name"] for f in result["fold_models"] for r in f["held_out_records"]}
    by = {r["record"]: r for r in result["per_record"]}
    assert by["mitdb:119"]["beat_model"] == held["119"] != "beat-cnn-bilstm"
    assert by["mitdb:100"]["beat_model"] == "beat-cnn-bilstm" and "100" not in held
    assert not any(r["trained_on"] for r in result["per_record"])
