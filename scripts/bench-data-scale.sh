#!/usr/bin/env bash
# Data sets of ImageNet's size: how long DATA takes to open and fingerprint (what every tool does before its first
# step), and the memory it takes, for a folder tree, a list file and tar shards of IMAGES items (default 1281167,
# ImageNet-1k's train split). Writes them under TMPDIR (about 5 GB for the tree's small files, 2.6 GB of shards),
# times lewel's `open-data` example (lib/examples/open-data.rs: `data::open` then `Dataset::fingerprint`) under
# /usr/bin/time -v, prints a Markdown table, writes it to bench-out/data-scale.md and deletes the data.
# The files are not images (16 bytes each): opening never reads an image; the list names REAL files (a few
# thousand copies of the fixtures' photos) so that its paths exist.
#
# Env: IMAGES (default 1281167), CLASSES (default 1000), PER_SHARD (default 1000), FORMS (default "folder list
#      shards"), LEWEL_EXAMPLES (default target/release/examples; build with
#      `cargo build --release -p lewel --example open-data`).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ex=${LEWEL_EXAMPLES:-$top/target/release/examples}/open-data
n=${IMAGES:-1281167}
classes=${CLASSES:-1000}
per=${PER_SHARD:-1000}
forms=${FORMS:-folder list shards}
[ -x "$ex" ] || { echo "bench-data-scale: $ex missing; cargo build --release -p lewel --example open-data" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/lewel-data-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$top/bench-out
mkdir -p "$out"

python3 - "$work" "$n" "$classes" "$per" "$top/fixtures/photos-96" "$forms" <<'PY'
import os, sys, tarfile, io
work, n, classes, per, photos, forms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6].split()
syn = [f"n{1440764 + 7919 * c:08d}" for c in range(classes)]
name = lambda i: f"{syn[i % classes]}/{syn[i % classes]}_{i // classes:05d}"
if "folder" in forms:
    for s in syn:
        os.makedirs(f"{work}/tree/{s}", exist_ok=True)
    blob = b"not an image 16b"
    for i in range(n):
        with open(f"{work}/tree/{name(i)}.JPEG", "wb") as f:
            f.write(blob)
if "list" in forms:
    real = sorted(os.listdir(photos))
    os.makedirs(f"{work}/files", exist_ok=True)
    k = 3000
    for j in range(k):
        d = f"{work}/files/{j % 30:02d}"
        os.makedirs(d, exist_ok=True)
        os.link(f"{photos}/{real[j % len(real)]}", f"{d}/img{j:05d}.png")
    with open(f"{work}/list.txt", "w") as f:
        f.write("".join(f"{i % classes} files/{(i % k) % 30:02d}/img{i % k:05d}.png\n" for i in range(n)))
if "shards" in forms:
    os.makedirs(f"{work}/shards", exist_ok=True)
    def member(tar, nm, data):
        ti = tarfile.TarInfo(nm); ti.size = len(data); ti.mode = 0o644
        tar.addfile(ti, io.BytesIO(data))
    for s in range(0, n, per):
        with tarfile.open(f"{work}/shards/shard-{s // per:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(s, min(n, s + per)):
                key = name(i).replace("/", "_")
                member(tar, key + ".jpg", b"not an image 16b")
                member(tar, key + ".cls", str(i % classes).encode())
PY

row() { # form, DATA
    local t=$work/time.txt js
    js=$(/usr/bin/time -v "$ex" "$2" 2>"$t")
    local wall rss
    wall=$(grep "Elapsed (wall" "$t" | awk '{print $NF}')
    rss=$(grep "Maximum resident" "$t" | awk '{print $NF}')
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); a=sys.argv; print("| %s | {:,} | %.2f | %.2f | %s | %.0f |".format(j["images"]) % (a[2], j["open_s"], j["fingerprint_s"], a[3], int(a[4]) / 1024))' "$js" "$1" "$wall" "$rss"
}
sync
{
    echo "| DATA | images | open s | fingerprint s | wall (m:ss) | peak RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "nothing (6 photos: the binary and libtorch alone)" "$top/fixtures/photos-96"
    for f in $forms; do
        case $f in
            folder) row "folder tree ($classes class folders)" "$work/tree" ;;
            list) row "list file (labelled, $(( n < 3000 ? n : 3000 )) real files)" "$work/list.txt" ;;
            shards) row "tar shards ($per per shard, .jpg + .cls)" "$work/shards" ;;
        esac
    done
    echo
    echo "$ex, page cache warm (the data were just written), $(nproc) cores"
} | tee "$out/data-scale.md"
