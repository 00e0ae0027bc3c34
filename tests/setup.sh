#!/usr/bin/env bash
# Installs what lockd's tests need beyond Rust, where it is missing: the
# component's target, Python (the gocept.lockd client scenarios), systemd
# (checks contrib/lockd.service), Node.js and the jco packages (the
# component in a second host), Chromium (the status page), strace (the
# order of writes and syncs; faults injected into them), chattr (an
# unwritable lock directory), etcd (clusters for cluster mode) and openssl
# (certificates for TLS to etcd). Safe to run again: installed packages are
# left as they are (npm ci reinstalls the jco packages each time, in
# seconds).
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
need strace strace
need chattr e2fsprogs
need etcd etcd-server
need openssl openssl
if ((${#missing[@]})); then
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "tests/setup.sh: install these Debian packages first: ${missing[*]}" >&2
            exit 1
        }
        as_root=(sudo)
    fi
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq "${missing[@]}"
fi

(cd tests/jco && npm ci --no-audit --no-fund --loglevel=error)
