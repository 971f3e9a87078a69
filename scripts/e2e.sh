#!/usr/bin/env bash
# Cross-tool pipeline checks: runs every tests/*.sh against the built binaries (target/debug, or
# LEWEL_BIN). Each test script gets BIN (the folder of the binaries), FIXTURES and a fresh TMP, and
# passes by exiting 0. Prints one line per test and a closing "N passed, N failed" line. LEWEL_E2E_ONLY=NAME
# runs tests/NAME.sh alone.
set -uo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BIN=${LEWEL_BIN:-$top/target/debug}
export FIXTURES=$top/fixtures
pass=0 fail=0 failed=()
for t in "$top"/tests/*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  if [ -n "${LEWEL_E2E_ONLY:-}" ] && [ "$name" != "$LEWEL_E2E_ONLY" ]; then continue; fi
  export TMP
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/lewel-e2e-$name.XXXXXX")
  start=$(date +%s)
  if (cd "$TMP" && bash "$t") >"$TMP/log" 2>&1; then
    pass=$((pass + 1)); printf 'e2e %-40s ok (%ss)\n' "$name" $(( $(date +%s) - start ))
    rm -rf "$TMP"
  else
    fail=$((fail + 1)); failed+=("$name")
    printf 'e2e %-40s FAILED (log below; files kept in %s)\n' "$name" "$TMP"
    sed 's/^/    /' "$TMP/log" | tail -n 40
  fi
done
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
