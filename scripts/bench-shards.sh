#!/usr/bin/env bash
# Benchmark of tar shards as DATA: `augment --dry-run` (decode and two lewel-b views per image, nothing
# written) over the same JPEGs as a folder and as tar shards (scripts/make-shards.sh), ROUNDS interleaved runs of
# each, cold page cache not attempted (both read from the cache after the first round). Prints a Markdown table
# with the medians and the ratio folder / shards (>= 1: shards at least as fast) and writes it to
# bench-out/shards.md.
#
# Env: ROUNDS (default 5), IMAGES (default 200), PER_SHARD (default 50), THREADS (default 0: one per core),
#      LEWEL_BIN (default target/release).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LEWEL_BIN:-$top/target/release}
py=$top/.venv/bin/python
rounds=${ROUNDS:-5}
count=${IMAGES:-200}
per=${PER_SHARD:-50}
threads=${THREADS:-0}
out=$top/bench-out
mkdir -p "$out"
[ -x "$bin/augment" ] || { echo "bench-shards: $bin/augment missing; run make release" >&2; exit 1; }
photos=$("$top/scripts/photos.sh" bench-shards)

work=$(mktemp -d "${TMPDIR:-/tmp}/lewel-bench-shards.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" "$top/benches/augment/make_images.py" "$photos" "$work/images" "$count" >/dev/null
pattern=$("$top/scripts/make-shards.sh" "$work/images" "$work/shards" --per-shard "$per" 2>/dev/null)

# seconds of one run of augment over DATA
one() {
    local t0 t1
    t0=$(date +%s.%N)
    "$bin/augment" "$1" --recipe lewel-b --dry-run --threads "$threads" --quiet >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

one "$work/images" >/dev/null # warm the page cache and the binary
one "$pattern" >/dev/null
: >"$work/folder.txt"
: >"$work/shards.txt"
for _ in $(seq "$rounds"); do
    one "$work/images" >>"$work/folder.txt"
    one "$pattern" >>"$work/shards.txt"
done
f=$(median <"$work/folder.txt")
s=$(median <"$work/shards.txt")
{
    echo "| DATA ($count JPEGs, $(du -sh "$work/images" | cut -f1)) | median s ($rounds runs) | images/s |"
    echo "|---|---:|---:|"
    printf '| folder | %.3f | %.0f |\n' "$f" "$(echo "$count / $f" | bc -l)"
    printf '| tar shards (%d per shard) | %.3f | %.0f |\n' "$per" "$s" "$(echo "$count / $s" | bc -l)"
    printf '\nfolder / shards time ratio: %.3f (>= 1: shards at least as fast); augment --recipe lewel-b --dry-run --threads %s, %s\n' \
        "$(echo "$f / $s" | bc -l)" "$threads" "$bin"
} | tee "$out/shards.md"
