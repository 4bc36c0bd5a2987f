#!/usr/bin/env bash
# Installs the system packages ecgmon's tests need (Debian/Ubuntu: apt-get), only those
# missing: mosquitto (the MQTT broker the tests start on loopback), nats-server (the NATS
# broker with JetStream that a ward of several daemons runs on; the failover test starts one),
# PortAudio (sounddevice's library; the tests read a WAV through ALSA's file plugin) and tmux
# (the dashboard's end-to-end test runs it in a real terminal).
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
# grep without -q: with pipefail, -q stopping early can kill ldconfig with SIGPIPE, and the
# package was reinstalled on every run.
ldconfig -p 2>/dev/null | grep "libportaudio\.so\.2" >/dev/null || missing+=(libportaudio2)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ecgmon tests need: ${missing[*]}; install them with your system's package manager" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing system packages: ${missing[*]}" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
