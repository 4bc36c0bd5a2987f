"""scripts/setup.sh's logic, with a fake Python that stands in for the interpreter, venv and pip
(the real first install takes minutes and downloads torch): one line per step with its time,
ticking on a terminal; nothing on a repeated run; the log, and exit 1, when a step fails."""

from __future__ import annotations

import os
from pathlib import Path
import pty
import re
import shutil
import subprocess

REPO = Path(__file__).resolve().parent.parent

# A python3 that only knows what setup.sh asks of it: the version check, `-m venv DIR` (which
# makes DIR/bin/python, a copy of itself) and `-m pip ...` (logged; fails if FAIL_ON matches).
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$0 $*" >> "$FAKE_CALLS"
case "$1 $2" in
  "-c "*) exit 0 ;;
  "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0 ;;
  "-m pip")
    echo "Collecting something for: $*"
    if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then echo "ERROR: no such package" >&2; exit 1; fi
    sleep "${FAKE_SLEEP:-0}"; exit 0 ;;
esac
exit 2
"""


def _project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "ecgmon"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "FAKE_CALLS": str(tmp_path / "calls"), "TMPDIR": str(tmp_path)}
    env.pop("ECGMON_EXTRAS", None)
    return root, env


def _setup(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_first_install_shows_each_step_and_a_repeat_is_silent(tmp_path: Path) -> None:
    root, env = _project(tmp_path)
    first = _setup(root, env)
    assert first.returncode == 0, first.stderr
    lines = re.sub(r"\d+s\b", "Ns", first.stderr).splitlines()  # seconds, whatever they were
    assert lines == [
        f"ecgmon setup: creating .venv with {env['PYTHON']} ...",
        f"ecgmon setup: creating .venv with {env['PYTHON']}: done (Ns)",
        "ecgmon setup: updating pip ...",
        "ecgmon setup: updating pip: done (Ns)",
        "ecgmon setup: installing torch==2.13.0 (large: a few minutes on a first install) ...",
        "ecgmon setup: installing torch==2.13.0 (large: a few minutes on a first install): done (Ns)",
        "ecgmon setup: installing ecgmon (.) and its dependencies ...",
        "ecgmon setup: installing ecgmon (.) and its dependencies: done (Ns)",
        "ecgmon setup: ready in Ns",
    ], first.stderr
    assert "Collecting" not in first.stderr  # pip's chatter stays in the log
    assert not list(tmp_path.glob("ecgmon-install.*"))  # the log goes once all went well
    calls = (tmp_path / "calls").read_text()
    assert "pip install torch==2.13.0" in calls and "pip install -e ." in calls
    again = _setup(root, env)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_a_failed_step_shows_its_log(tmp_path: Path) -> None:
    root, env = _project(tmp_path)
    failed = _setup(root, {**env, "FAIL_ON": "torch"})
    assert failed.returncode == 1
    assert "installing torch==2.13.0 (large: a few minutes on a first install): failed" in failed.stderr
    assert "ERROR: no such package" in failed.stderr and "installing into .venv failed" in failed.stderr
    assert "installing ecgmon" not in failed.stderr  # stops at the failed step
    assert not list((root / ".venv").glob(".ecgmon-installed-*"))
    # Fixed, the next run installs (the venv is there already, so no step creates it).
    again = _setup(root, env)
    assert again.returncode == 0 and "creating .venv" not in again.stderr and "ready in" in again.stderr


def test_on_a_terminal_the_elapsed_time_ticks(tmp_path: Path) -> None:
    root, env = _project(tmp_path)
    pid, fd = pty.fork()
    if pid == 0:  # the child: setup.sh with its stderr on the pty
        os.execve("/bin/bash", ["bash", str(root / "scripts" / "setup.sh")], {**env, "FAKE_SLEEP": "2.5"})
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    text = out.decode()
    # The torch step counted while it ran, then said how long it took, on the same line.
    assert "\recgmon setup: installing torch==2.13.0 (large: a few minutes on a first install) ... 1s" in text, text
    assert "installing torch==2.13.0 (large: a few minutes on a first install) ... done (" in text, text
