"""Issue 12, reproduction 8: no traceback reaches a user. A config file or a WFDB header that
cannot be used is one clear error line and exit 2, at once; any other exception is one
"internal error" line and exit 1, with the traceback only under ``-v``.

The commands run as a user runs them: the installed ``ecgmon`` script, in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from ecgmon.cli import main

REPO = Path(__file__).resolve().parent.parent
ECGMON = Path(sys.executable).parent / "ecgmon"


def run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    cmd = [str(ECGMON)] if ECGMON.is_file() else [sys.executable, "-m", "ecgmon.cli"]
    return subprocess.run([*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, **kw)


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr


# The endpoint only guards: a config or record error must stop ecgmon before it binds.
RUN = ["run", "--headless", "--endpoint", "tcp://127.0.0.1:0", "--control", ""]


def test_config_file_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('[run]\nsources = ["sim"]  # schön\n'.encode("latin-1"))
    assert_one_error_line(run(["--config", str(cfg), *RUN], tmp_path), str(cfg), "UTF-8")


def test_config_is_a_folder(tmp_path: Path) -> None:
    assert_one_error_line(run(["--config", str(tmp_path), *RUN], tmp_path), str(tmp_path), "folder")


def test_config_under_a_file_is_an_os_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "config.toml"
    not_a_dir.write_text("")
    cfg = not_a_dir / "x.toml"  # NotADirectoryError: neither "not found" nor a folder
    assert_one_error_line(run(["--config", str(cfg), *RUN], tmp_path), str(cfg), "cannot read")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file (the OSError branch is "
                    "tested by test_config_under_a_file_is_an_os_error)")
def test_config_not_readable(tmp_path: Path) -> None:
    cfg = tmp_path / "secret.toml"
    cfg.write_text("[replay]\nspeed = 1\n")
    cfg.chmod(0)
    assert_one_error_line(run(["--config", str(cfg), *RUN], tmp_path), str(cfg), "cannot read",
                          "ermission denied")


def test_config_nested_too_deeply(tmp_path: Path) -> None:
    cfg = tmp_path / "deep.toml"
    cfg.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_error_line(run(["--config", str(cfg), *RUN], tmp_path), str(cfg), "not valid TOML")


def test_config_nan_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "nan.toml"
    cfg.write_text("[serial]\noffset = nan\n")  # every serial sample would be NaN
    assert_one_error_line(run(["--config", str(cfg), *RUN], tmp_path), "serial.offset")


def _record_copy(data_dir: Path, folder: Path, first_line: str | None = None) -> Path:
    """mitdb 100 copied into ``folder``; its header's first line replaced if given."""
    for ext in ("hea", "dat", "atr"):
        shutil.copy(data_dir / "mitdb" / f"100.{ext}", folder / f"100.{ext}")
    hea = folder / "100.hea"
    if first_line is not None:
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join([first_line, *lines[1:]]) + "\n")
    return hea


@pytest.mark.parametrize("fs", ["0", "0/0", "1e999"])
def test_header_with_an_impossible_rate(fs: str, tmp_path: Path, data_dir: Path) -> None:
    hea = _record_copy(data_dir, tmp_path, f"100 2 {fs} 650000")
    proc = run([*RUN, "--source", str(hea), "--speed", "0"], tmp_path)
    assert_one_error_line(proc, str(hea))
    assert "RuntimeWarning" not in proc.stderr


@pytest.mark.parametrize("fs", ["50", "1", "100", "4000"])
def test_record_rate_outside_the_detector_range(fs: str, tmp_path: Path, data_dir: Path) -> None:
    hea = _record_copy(data_dir, tmp_path, f"100 2 {fs} 650000")
    proc = run([*RUN, "--source", str(hea), "--speed", "0"], tmp_path)
    assert_one_error_line(proc, str(hea), f"{fs} Hz", "125-1000 Hz")


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_exception_is_one_line(verbose: bool, capsys, monkeypatch) -> None:
    def broken(args, config) -> int:
        raise KeyError("boom\nsecond line")

    monkeypatch.setattr("ecgmon.commands.devices.cmd_devices", broken)
    monkeypatch.setattr("ecgmon.cli.setup_logging", lambda verbose: None)  # keep pytest's logging
    assert main(["devices", *(["-v"] if verbose else [])]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: internal error: KeyError: 'boom"), err
    if verbose:
        assert "Traceback" in err and "raise KeyError" in err
    else:
        assert "Traceback" not in err and err.count("\n") == 1
        assert "(run with -v for the traceback)" in last


def test_a_records_list_that_is_not_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydb").mkdir()
    (tmp_path / "mydb" / "RECORDS").write_bytes(b"100\n\xff\xfe101\n")
    monkeypatch.setenv("ECGMON_DATA", str(tmp_path))
    proc = run(["evaluate", "qrs", "--db", "mydb"], tmp_path)
    assert_one_error_line(proc, str(tmp_path / "mydb" / "RECORDS"))


def test_a_reader_that_goes_away_is_a_quiet_stop(tmp_path: Path) -> None:
    """`ecgmon evaluate ... | head`: the reader closing the pipe is no 'internal error'."""
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    cmd = [str(ECGMON)] if ECGMON.is_file() else [sys.executable, "-m", "ecgmon.cli"]
    proc = subprocess.Popen([*cmd, "evaluate", "qrs", "mitdb:100", "--json", "-"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # gone before ecgmon writes a byte
    _, err = proc.communicate(timeout=120)
    assert "internal error" not in err and "Traceback" not in err, err
    assert proc.returncode == 0, err
