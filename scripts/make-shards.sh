#!/usr/bin/env bash
# Writes tar shards in the webdataset layout from an image folder, so that any lewel tool can read them as DATA:
#
#   scripts/make-shards.sh FOLDER OUTDIR [--per-shard N] [--prefix NAME]
#
# FOLDER with class sub-folders (an ImageFolder) gives each image a .cls member, the index of its class among the
# sorted class names (what the tools give a class folder); a flat folder gives unlabelled samples. Images
# (.jpg .jpeg .png .webp, any case) are found recursively in torchvision's order (sorted folders, sorted names),
# so item i of the shards is item i of FOLDER. Sample k is the members KEY.EXT (the file's bytes, unchanged) and
# KEY.cls, with KEY = the image's path under its class folder without its extension, dots turned into "_" (the
# webdataset key ends at the first dot). Shards are OUTDIR/NAME-000000.tar, ... of N samples each (default 1000);
# the member order, the names and the metadata (mode 0644, mtime 0, owner 0) are fixed, so the same folder always
# gives the same bytes. Also writes OUTDIR/shards.txt, the list of the shards (a DATA form). Prints the brace
# pattern to give as DATA.
#
# Example:  scripts/make-shards.sh imagenet/train shards/ --per-shard 1000
#           pretrain 'shards/shard-{000000..001281}.tar' --out run/
set -euo pipefail
usage() { echo "usage: make-shards.sh FOLDER OUTDIR [--per-shard N] [--prefix NAME]" >&2; exit 2; }
[ $# -ge 2 ] || usage
src=$1 out=$2
shift 2
per=1000 prefix=shard
while [ $# -gt 0 ]; do
    case $1 in
        --per-shard) per=${2:?}; shift 2 ;;
        --prefix) prefix=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done
[ -d "$src" ] || { echo "make-shards: $src is not a folder" >&2; exit 1; }
[[ $per =~ ^[1-9][0-9]*$ ]] || { echo "make-shards: --per-shard must be a positive integer" >&2; exit 2; }
mkdir -p "$out"
exec python3 - "$src" "$out" "$per" "$prefix" <<'PY'
import os, sys, tarfile, io

src, out, per, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
EXT = {".jpg", ".jpeg", ".png", ".webp"}

def entries(d):
    names = sorted(n for n in os.listdir(d) if not n.startswith("."))
    return [(n, os.path.join(d, n)) for n in names]

def walk(d):
    """Image files under d in torchvision's order: sorted names of this folder, then its sub-folders."""
    es = entries(d)
    files = [p for n, p in es if not os.path.isdir(p) and os.path.splitext(n)[1].lower() in EXT]
    for n, p in es:
        if os.path.isdir(p):
            files += walk(p)
    return files

classes = [n for n, p in entries(src) if os.path.isdir(p)]
samples = []  # (path, key, label or None)
if classes:
    for k, c in enumerate(classes):
        base = os.path.join(src, c)
        for p in walk(base):
            samples.append((p, os.path.relpath(p, src), k))
else:
    for p in walk(src):
        samples.append((p, os.path.relpath(p, src), None))
if not samples:
    sys.exit(f"make-shards: no images (.jpg .jpeg .png .webp) under {src}")

def key_of(rel):
    d, f = os.path.split(os.path.splitext(rel)[0])
    return os.path.join(d, f.replace(".", "_"))

seen = set()
for p, rel, _ in samples:
    k = key_of(rel)
    if k in seen:
        sys.exit(f"make-shards: two images give the key {k} (e.g. {rel}); rename one")
    seen.add(k)

def member(tar, name, data):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0o644, 0, 0, 0, "", ""
    tar.addfile(ti, io.BytesIO(data))

shards = []
for s in range(0, len(samples), per):
    name = f"{prefix}-{s // per:06d}.tar"
    tmp = os.path.join(out, f".{name}.tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for p, rel, label in samples[s:s + per]:
                key = key_of(rel)
                with open(p, "rb") as img:
                    member(tar, key + os.path.splitext(p)[1].lower(), img.read())
                if label is not None:
                    member(tar, key + ".cls", str(label).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, name))
    shards.append(name)
with open(os.path.join(out, "shards.txt"), "w") as f:
    f.write("".join(n + "\n" for n in shards))
last = len(shards) - 1
print(os.path.join(out, f"{prefix}-{{000000..{last:06d}}}.tar"))
print(f"make-shards: {len(samples)} images, {len(classes)} classes, {len(shards)} shards in {out}", file=sys.stderr)
PY
