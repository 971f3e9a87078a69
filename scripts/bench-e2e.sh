#!/usr/bin/env bash
# End-to-end training throughput (issue 11): `pretrain DATA --recipe R --threads N` reading JPEGs with
# augmentation on, against a plain PyTorch loop with a DataLoader of the same recipe, N worker processes and
# the same model step (benches/e2e/torch_loop.py), alternating REPEATS rounds, for each thread count: images/s
# and the fraction of time the loop waits for data. The JPEGs are cut from the real photos of the Debian
# package mate-backgrounds (as the augment benchmark's) once per run. Prints a Markdown table of medians and
# writes it to bench-out/e2e.md. About 4-5 minutes on an idle 2-core machine with the defaults.
#
# Env: REPEATS (default 3), THREADS (comma-separated, default 1,2), CASES (default "small 224": see
# benches/e2e/run_bench.py), SMALL_IMAGES (default 2048, 96x96: 16 steps of 128), BIG_IMAGES (default 512,
# 500x375: 16 steps of 32), STEP_REF (default 1: each case's step is also timed alone, on one batch of views,
# for both sides; 0 skips that and saves a minute), LEWEL_BIN (default target/release).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LEWEL_BIN:-$top/target/release}
py=$top/.venv/bin/python
repeats=${REPEATS:-3}
threads=${THREADS:-1,2}
cases=${CASES:-small 224}
photos=$("$top/scripts/photos.sh" bench-e2e)
out=$top/bench-out
mkdir -p "$out"

[ -x "$bin/pretrain" ] || { echo "bench-e2e: $bin/pretrain missing; run make release" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/lewel-bench-e2e-data.XXXXXX")
trap 'rm -rf "$work"' EXIT
args=()
for c in $cases; do
  case $c in
    small) "$py" "$top/benches/augment/make_images.py" "$photos" "$work/small" "${SMALL_IMAGES:-2048}" 96x96 ;;
    224) "$py" "$top/benches/augment/make_images.py" "$photos" "$work/224" "${BIG_IMAGES:-512}" 500x375 ;;
    *) echo "bench-e2e: unknown case $c (small, 224)" >&2; exit 2 ;;
  esac
  args+=("$c=$work/$c")
  if [ "${STEP_REF:-1}" = 1 ]; then args+=("$c=ref"); fi
done

echo "bench-e2e: load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$py" "$top/benches/e2e/run_bench.py" "$bin/pretrain" "$repeats" "$threads" "${args[@]}" >"$out/e2e.md"
cat "$out/e2e.md"
