#!/usr/bin/env bash
# Installs what lockd's tests need beyond Rust, where it is missing: the
# component's target, Python (the gocept.lockd client scenarios), systemd
# (checks contrib/lockd.service), Node.js and the jco packages (the
# component in a second host), and Chromium (the status page). Safe to run
# again: what is there is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2

missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need python3 python3
need systemd-analyze systemd
need node nodejs
need npm npm
need chromium chromium
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}"
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq
        sudo apt-get install -y -qq "${missing[@]}"
    else
        echo "tests/setup.sh: install these Debian packages first: ${missing[*]}" >&2
        exit 1
    fi
fi

(cd tests/jco && npm ci --no-audit --no-fund --loglevel=error)
