#!/usr/bin/env bash
# lockd against Redis SET NX, by turns in one sitting (docs/benchmarks.md).
#
#   tests/bench-redis.sh [LOCKD] [ROUNDS] [SECONDS]
#
# Each round runs Redis with `appendfsync always` (every write synced
# before its answer, as lockd's --sync=always) and lockd --sync=always, the
# servers on CPU 0 and the load on CPU 1, 16 connections each: Redis
# takes `SET key NX` on random keys (redis-benchmark), lockd lock/unlock
# pairs on a resource per connection (`lockd bench`). Both keep their
# files in $TMPDIR (default /tmp). Needs redis-server and redis-benchmark
# (Debian: apt-get install redis-server redis-tools).
set -euo pipefail
lockd=${1:-target/release/lockd}
rounds=${2:-3}
seconds=${3:-6}
for tool in redis-server redis-benchmark taskset; do
    command -v "$tool" >/dev/null || { echo "bench-redis: $tool is needed" >&2; exit 2; }
done
work=$(mktemp -d)
redis_pid=
cleanup() {
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
requests=$((seconds * 30000))
redis_ops=()
lockd_ops=()
for round in $(seq "$rounds"); do
    rm -rf "$work/redis" && mkdir -p "$work/redis"
    taskset -c 0 redis-server --bind 127.0.0.1 --port "$port" --dir "$work/redis" \
        --appendonly yes --appendfsync always --save '' --daemonize no \
        --logfile "$work/redis.log" &
    redis_pid=$!
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        kill -0 "$redis_pid" || { cat "$work/redis.log" >&2; exit 1; }
        sleep 0.05
    done
    line=$(taskset -c 1 redis-benchmark -p "$port" -c 16 -n "$requests" -r 100000000 -q \
        SET 'key:__rand_int__' v NX | tr '\r' '\n' | grep 'requests per second' | tail -1)
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=
    ops=$(echo "$line" | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')
    redis_ops+=("${ops%.*}")
    ops=$(TMPDIR=${TMPDIR:-/tmp} taskset -c 1 "$lockd" bench --sync always --connections 16 \
        --duration "$seconds" --server-cpus 0 | awk '$1 == "lockd" && $3 == 16 { print $4 }')
    lockd_ops+=("$ops")
    echo "round $round: Redis SET NX (appendfsync always) ${redis_ops[-1]} ops/s," \
        "lockd --sync=always lock/unlock ${lockd_ops[-1]} ops/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
r=$(median "${redis_ops[@]}")
l=$(median "${lockd_ops[@]}")
echo "medians: Redis ${r} ops/s, lockd ${l} ops/s: lockd/Redis $(awk -v l="$l" -v r="$r" 'BEGIN { printf "%.2f", l / r }')x"
