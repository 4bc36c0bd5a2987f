#!/usr/bin/env bash
# Creates .venv and installs ecgmon into it (editable) with the extras named in $ECGMON_EXTRAS.
# Re-runs pip only when pyproject.toml or the extras changed, so repeated runs start fast.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=${ECGMON_EXTRAS:-}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ecgmon needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# One stamp per set of extras, holding the pyproject.toml it was installed from.
stamp=".venv/.ecgmon-installed-${extras:-base}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    echo "installing ecgmon ($spec) into .venv ..." >&2
    # Build-backend chatter goes to a log that is shown only when the install fails.
    log=.venv/install.log
    # torch first, pinned: this machine kind carries its CPU build, while an open range
    # would fetch a multi-GB CUDA build from the registry.
    if ! { .venv/bin/python -m pip install --quiet --upgrade pip &&
           .venv/bin/python -m pip install --quiet "torch==${ECGMON_TORCH:-2.13.0}" &&
           .venv/bin/python -m pip install --quiet -e "$spec"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "ecgmon: installing into .venv failed (log above, also in $log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
