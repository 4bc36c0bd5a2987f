#!/usr/bin/env bash
# Sets up ecgmon with its test dependencies (system packages too: system-deps.sh) and runs
# the test suite on the real recordings in $ECGMON_DATA (default: ../shared/data beside the
# checkout). Arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/system-deps.sh"
ECGMON_EXTRAS=test "$root/scripts/setup.sh"
export ECGMON_DATA="${ECGMON_DATA:-$root/../shared/data}"
cd "$root"
exec .venv/bin/python -m pytest "$@"
