#!/usr/bin/env bash
# Benchmark of `augment` against the same recipe written with torchvision + PIL (benches/augment/
# baseline.py), measured side by side in one run: two 224 px views per image under lewel-b, on
# ~200 ImageNet-sized JPEGs cut from the real photos of the Debian package mate-backgrounds.
# Prints a Markdown table (medians of ROUNDS interleaved runs) and writes it to bench-out/augment.md.
#
# Env: ROUNDS (default 5), IMAGES (default 200), LEWEL_BIN (default target/release).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LEWEL_BIN:-$top/target/release}
py=$top/.venv/bin/python
rounds=${ROUNDS:-5}
count=${IMAGES:-200}
photos=$("$top/scripts/photos.sh" bench-augment)
out=$top/bench-out
mkdir -p "$out"

[ -x "$bin/augment" ] || { echo "bench-augment: $bin/augment missing; run make release" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/lewel-bench-augment.XXXXXX")
# Output files go to memory when possible, so that disk speed does not enter the figures.
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm=$work
views=$(mktemp -d "$shm/lewel-bench-views.XXXXXX")
trap 'rm -rf "$work" "$views"' EXIT
"$py" "$top/benches/augment/make_images.py" "$photos" "$work/images" "$count"

"$py" "$top/benches/augment/run_bench.py" "$bin/augment" "$work/images" "$views" "$rounds" >"$out/augment.md"
cat "$out/augment.md"
