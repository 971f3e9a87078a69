#!/usr/bin/env bash
# `make bench`: runs every scripts/bench-*.sh (each measures one tool against a peer in the same run
# and appends its table to bench-out/). See BENCHMARKS.md for the figures and the commands.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
n=0
for b in "$top"/scripts/bench-*.sh; do
  [ -e "$b" ] || continue
  echo "bench: $(basename "$b")" >&2
  bash "$b"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || echo "bench: no benchmarks yet (they arrive with the tools they measure)" >&2
