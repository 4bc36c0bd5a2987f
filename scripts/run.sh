#!/usr/bin/env bash
# Sets up ecgmon (first run only) and runs the daemon: `ecgmon run` with the given arguments.
# With no arguments it monitors the built-in simulator from config.toml and shows the live view.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
export ECGMON_DATA="${ECGMON_DATA:-$root/../shared/data}"
cd "$root"
exec .venv/bin/ecgmon run "$@"
