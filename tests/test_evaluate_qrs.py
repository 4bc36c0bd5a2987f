"""`ecgmon evaluate qrs`: the streaming pipeline scored against reference annotations."""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil

from ecgmon.cli import main


def test_whole_database_meets_the_ec57_floors(capsys) -> None:
    """The acceptance figures of the detector, over every record in ../shared/data/mitdb."""
    assert main(["evaluate", "qrs", "--db", "mitdb", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["records"]) == 27
    gross = result["gross"]
    assert gross["se"] >= 0.995 and gross["ppv"] >= 0.995, gross
    assert result["delay_ms"]["p50"] <= 300
    assert result["delay_ms"]["p5"] > 0


def test_table_names_records_and_totals(capsys) -> None:
    assert main(["evaluate", "qrs", "mitdb:100", "--chunk-s", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "mitdb:100" in out and "Gross" in out and "Detection delay" in out


def test_result_does_not_depend_on_replay_chunk_length(capsys) -> None:
    runs = []
    for chunk in ("0.05", "10"):
        assert main(["evaluate", "qrs", "--db", "mitdb", "208", "--chunk-s", chunk, "--json", "-"]) == 0
        runs.append(json.loads(capsys.readouterr().out)["records"])
    assert runs[0] == runs[1]


def test_bad_records_are_reported_and_the_others_scored(tmp_path: Path, capsys) -> None:
    data = Path(os.environ["ECGMON_DATA"]) / "mitdb"
    for ext in ("hea", "dat", "atr"):
        shutil.copy(data / f"100.{ext}", tmp_path / f"100.{ext}")
    (tmp_path / "100.dat").write_bytes((tmp_path / "100.dat").read_bytes()[:1000])
    missing = str(tmp_path / "nosuch.hea")
    code = main(["evaluate", "qrs", str(tmp_path / "100.hea"), "mitdb:119", missing, "--json", "-"])
    captured = capsys.readouterr()
    assert code == 2
    assert "truncated" in captured.err and missing in captured.err
    assert "Traceback" not in captured.err
    assert [r["record"] for r in json.loads(captured.out)["records"]] == ["mitdb:119"]


def test_database_without_a_local_list_offline(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("ECGMON_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr("wfdb.io.get_record_list", offline)  # PhysioNet cannot be reached here
    assert main(["evaluate", "qrs", "--db", "mitdb"]) == 2
    err = capsys.readouterr().err
    assert "cannot list the records of mitdb" in err and "Traceback" not in err
