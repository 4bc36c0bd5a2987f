#!/usr/bin/env bash
# The long fuzzing run: every property-based (hypothesis) test with a large example budget
# and fresh random examples (the normal test run uses a small, fixed one). Takes a while.
#   scripts/fuzz.sh                         20,000 examples per property
#   ECGMON_FUZZ_EXAMPLES=100000 scripts/fuzz.sh -x
# Arguments go to pytest. A failure prints the smallest input hypothesis found.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export ECGMON_DATA="${ECGMON_DATA:-$root/../shared/data}"
export ECGMON_FUZZ_EXAMPLES="${ECGMON_FUZZ_EXAMPLES:-20000}"
# Every test using fuzz_settings: the fuzz test files and the property tests named *fuzz*.
exec .venv/bin/python -m pytest -k fuzz -q -p no:cacheprovider "$@" tests
