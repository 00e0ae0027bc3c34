#!/usr/bin/env bash
# Gives the cluster explorer's teeth a number: puts back, one at a time,
# each fault the review found in cluster mode (the patches here, against
# host/src), runs the regression tests (cluster_faults) and the explorer
# until its first failing seed, and prints which tests failed, how long
# the explorer took and what it saw. The checkout is put back however this
# ends. Usage: bash tests/mutants/run.sh [budget seconds per fault, 300]
# [names of patches to run, all by default]
set -euo pipefail
cd "$(dirname "$0")/../.."
budget=${1:-300}
shift || true
patches=()
if [ $# -eq 0 ]; then patches=(tests/mutants/*.patch); fi
for name in "$@"; do patches+=("tests/mutants/$name.patch"); done
current=""
restore() { if [ -n "$current" ]; then git apply -R "$current"; fi; }
trap restore EXIT
for patch in "${patches[@]}"; do
  git apply "$patch"
  current=$patch
  cargo build --tests -q 2>/dev/null
  log=$(mktemp)
  cargo test -q --test integration cluster_faults >"$log" 2>&1 || true
  failing=$(grep -oE '^    cluster_faults::[a-z_0-9]+' "$log" | sed 's/ *cluster_faults:://' | paste -sd, - || true)
  LOCKD_EXPLORE_STOP=1 LOCKD_EXPLORE_SECS=$budget \
    cargo test -q --test integration cluster_explore -- --nocapture >"$log" 2>&1 || true
  found=$(grep -m1 -E '^explorer: seed [0-9]+ FAILED' "$log" || echo "not found within ${budget} s")
  seen=$(grep -A1 -m1 -E '^explorer: seed [0-9]+ FAILED' "$log" | tail -n1 | cut -c1-160 || true)
  echo "$(basename "$patch" .patch): $found"
  [ -n "$seen" ] && echo "    $seen"
  echo "    regression tests failing: ${failing:-none}"
  rm -f "$log"
  git apply -R "$patch"
  current=""
done
