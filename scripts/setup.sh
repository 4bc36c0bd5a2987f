#!/usr/bin/env bash
# Creates .venv and installs ecgmon into it (editable) with the extras named in $ECGMON_EXTRAS.
# Re-runs pip only when pyproject.toml or the extras changed, so repeated runs start fast and
# print nothing. The first install takes minutes (torch is large): each step is one line with
# its elapsed time, ticking every second on a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=${ECGMON_EXTRAS:-}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ecgmon needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

# step TEXT COMMAND...: run COMMAND with its output in $log, showing "ecgmon setup: TEXT" and
# the seconds it took (on a terminal, counting while it runs).
step() {
    local label="ecgmon setup: $1" start=$SECONDS pid
    shift
    if [ -t 2 ]; then
        "$@" >>"$log" 2>&1 &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            printf '\r%s ... %ds' "$label" $((SECONDS - start)) >&2
            sleep 1
        done
        wait "$pid" || { printf '\r%s ... failed\n' "$label" >&2; return 1; }
        printf '\r%s ... done (%ds)\n' "$label" $((SECONDS - start)) >&2
    else
        echo "$label ..." >&2
        "$@" >>"$log" 2>&1 || { echo "$label: failed" >&2; return 1; }
        echo "$label: done ($((SECONDS - start))s)" >&2
    fi
}

# One stamp per set of extras, holding the pyproject.toml it was installed from.
stamp=".venv/.ecgmon-installed-${extras:-base}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    # Build-backend and pip chatter goes to a log that is shown only when a step fails.
    log="$(mktemp "${TMPDIR:-/tmp}/ecgmon-install.XXXXXX")"
    began=$SECONDS
    # torch first, pinned: this machine kind carries its CPU build, while an open range
    # would fetch a multi-GB CUDA build from the registry.
    torch="torch==${ECGMON_TORCH:-2.13.0}"
    if ! { { [ -x .venv/bin/python ] || step "creating .venv with $PYTHON" "$PYTHON" -m venv .venv; } &&
           step "updating pip" .venv/bin/python -m pip install --upgrade pip &&
           step "installing $torch (large: a few minutes on a first install)" \
               .venv/bin/python -m pip install "$torch" &&
           step "installing ecgmon ($spec) and its dependencies" .venv/bin/python -m pip install -e "$spec"; }; then
        cat "$log" >&2
        echo "ecgmon: installing into .venv failed (log above, also in $log)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp"
    echo "ecgmon setup: ready in $((SECONDS - began))s" >&2
fi
