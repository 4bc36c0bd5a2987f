"""Issue 12: one convention for every ``ecgmon evaluate`` report, and records that fail.

``--json -`` prints the JSON on stdout instead of the tables, ``--json FILE`` writes it as
well as the tables; a record that cannot be read is named in the JSON's ``failed_records``,
the others are still scored, and the exit code is 2; tables printed to a pipe are not cut
at 80 columns. The commands run as a user runs them: the ``ecgmon`` script in a subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ECGMON = Path(sys.executable).parent / "ecgmon"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ECGMON_CONFIG", "COLUMNS")}
    cmd = [str(ECGMON)] if ECGMON.is_file() else [sys.executable, "-m", "ecgmon.cli"]
    return subprocess.run([*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def bad_records(tmp_path: Path, data_dir: Path) -> list[str]:
    """A record whose signal file is truncated, and one that does not exist."""
    for ext in ("hea", "dat", "atr"):
        shutil.copy(data_dir / "mitdb" / f"100.{ext}", tmp_path / f"100.{ext}")
    (tmp_path / "100.dat").write_bytes((tmp_path / "100.dat").read_bytes()[:1000])
    return [str(tmp_path / "100.hea"), str(tmp_path / "nosuch.hea")]


@pytest.mark.parametrize("what", ["qrs", "beats"])
def test_failed_records_are_named_in_the_json_and_exit_2(what: str, bad_records: list[str], tmp_path: Path) -> None:
    proc = run(["evaluate", what, "mitdb:100", *bad_records, "--json", "-"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)  # the JSON alone on stdout
    failed = {f["record"]: f["error"] for f in result["failed_records"]}
    assert set(failed) == set(bad_records)
    assert "truncated" in failed[bad_records[0]] and "not found" in failed[bad_records[1]]
    scored = result["records"] if what == "qrs" else result["all"]["records"]
    assert scored == ["mitdb:100"] or [r["record"] for r in scored] == ["mitdb:100"]
    assert "2 of 3 records could not be evaluated" in proc.stderr


def test_json_to_a_file_and_the_table_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "qrs.json"
    proc = run(["evaluate", "qrs", "mitdb:100", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert [r["record"] for r in result["records"]] == ["mitdb:100"] and result["failed_records"] == []
    assert "Gross" in proc.stdout and "Detection delay" in proc.stdout


def test_every_evaluate_command_has_the_same_json_option() -> None:
    from ecgmon.cli import build_parser

    parser = build_parser()
    for what, rest in [("qrs", ["mitdb:100"]), ("beats", ["mitdb:100"]), ("alarms", ["mitdb:100"]),
                       ("model", ["m.pt"]), ("pcg", ["dir"])]:
        assert parser.parse_args(["evaluate", what, *rest, "--json", "-"]).json == "-", what
        assert parser.parse_args(["evaluate", what, *rest, "--json", "x.json"]).json == "x.json", what


def test_tables_in_a_pipe_are_not_cut_at_80_columns(tmp_path: Path) -> None:
    proc = run(["evaluate", "qrs", "mitdb:100"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (delays,) = [line for line in proc.stdout.splitlines() if line.startswith("Detection delay")]
    assert len(delays) > 80 and "p99" in delays and delays.rstrip().endswith("ms"), proc.stdout
