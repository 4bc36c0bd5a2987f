"""`ecgmon evaluate beats`: the EC57 confusion and V/S statistics of the live beat classes."""

from __future__ import annotations

import json

import numpy as np

from ecgmon.cli import main
from ecgmon.evaluate.beats import COLUMNS, ROWS, confusion_of, detection_stats
from ecgmon.schema import BeatMessage


def _beat(sample: int, label: str | None) -> BeatMessage:
    return BeatMessage(stream="s", sample=sample, time_s=sample / 360, fs=360.0, delay_ms=0.0, rr_ms=None,
                       amplitude_mv=1.0, label=label)


def test_confusion_counts_matches_misses_extras_and_unclassified():
    ref = np.array([1000, 2000, 3000, 4000, 5000])
    labels = ["N", "V", "S", "N", "V"]
    beats = [_beat(1010, "N"), _beat(2005, "V"), _beat(3020, "N"), _beat(4001, None), _beat(4500, "V")]
    m = confusion_of(ref, labels, beats, 360.0)
    cell = lambda r, c: m[ROWS.index(r), COLUMNS.index(c)]  # noqa: E731
    assert cell("N", "N") == 1 and cell("V", "V") == 1 and cell("S", "N") == 1
    assert cell("N", "-") == 1  # detected, not classified
    assert cell("V", "O") == 1  # 5000 not detected: 4500 is 1.4 s away
    assert cell("X", "V") == 1  # 4500 matches no reference beat
    assert m.sum() == len(ref) + 1


def test_ec57_v_and_s_statistics():
    m = np.zeros((len(ROWS), len(COLUMNS)), dtype=np.int64)
    put = lambda r, c, n: m.__setitem__((ROWS.index(r), COLUMNS.index(c)), n)  # noqa: E731
    put("N", "N", 90); put("N", "V", 5); put("N", "S", 5)
    put("V", "V", 8); put("V", "N", 1); put("V", "O", 1)
    put("S", "S", 3); put("S", "N", 2)
    put("F", "V", 4)  # fusion called V: not a V false positive
    put("Q", "V", 7)  # Q beats are left out
    put("X", "V", 1)
    v = detection_stats(m, "V")
    assert (v["tp"], v["fn"], v["fp"]) == (8, 2, 5 + 1)
    assert v["tn"] == 95 + 5  # N rows not called V, S rows not called V
    assert v["se"] == 0.8 and abs(v["ppv"] - 8 / 14) < 1e-12
    s = detection_stats(m, "S")
    assert (s["tp"], s["fn"], s["fp"]) == (3, 2, 5)


def test_cli_scores_a_record_through_the_pipeline(tmp_path, capsys):
    out = tmp_path / "beats.json"
    assert main(["evaluate", "beats", "mitdb:100", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    counts = np.array(result["all"]["confusion"]["counts"])
    # Record 100's reference: 2239 N, 33 A (S) and 1 V beats.
    assert counts[ROWS.index("N")].sum() == 2239
    assert counts[ROWS.index("S")].sum() == 33 and counts[ROWS.index("V")].sum() == 1
    assert counts[:, COLUMNS.index("O")].sum() <= 3  # the detector misses almost nothing
    assert counts[ROWS.index("N"), COLUMNS.index("N")] > 2200
    held = result["held_out"]["records"]
    assert held == ["mitdb:100"]  # 100 is a DS2 record: no shipped model trained on it
    assert "V Se" in capsys.readouterr().out


def test_cli_unknown_record_is_one_error_line(capsys):
    assert main(["evaluate", "beats", "mitdb:nosuch"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nosuch" in err and "Traceback" not in err
