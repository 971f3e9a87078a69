#!/usr/bin/env bash
# The dense comparison of BENCHMARKS.md (issue 18): dense-probe's two protocols (linear and knn, their fixed
# defaults) on the frozen backbones of a finished scenes learning run (scripts/learn-fmnist.sh with BENCH=scenes):
# every OUT/runs/<method>-s<seed>/run/ckpt/latest (the random backbones, the self-supervised runs and the
# supervised upper bound), the training images the runs used as the training split (the bank and the linear
# head's data), the scenes' test split as the validation split, scored at the masks' own 48 px.
#
#   scripts/dense-scenes.sh OUT            # OUT: the learning run's folder (summary.md, data/, runs/)
#
# Env: SCENES (the scenes folder; default: benches/learning/make-scenes.sh's cached one, with its defaults), MEMORY (knn --memory-size;
# default 1000000, the tool's: every patch of 10,000 training images of 6x6 patches), BIN (default target/release),
# METHODS (default: every run folder). Results are appended to OUT/dense.jsonl (dense-probe --results: what
# is there already is skipped, so an interrupted run goes on); OUT/dense.md is the table, mean ± half the
# range over seeds with the per-seed values in brackets.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:?usage: scripts/dense-scenes.sh OUT (a scenes learning run folder)}
BIN=${BIN:-$top/target/release}
MEMORY=${MEMORY:-1000000}
[ -x "$BIN/dense-probe" ] || { echo "dense-scenes: $BIN/dense-probe is missing (cargo build --release -p dense-probe, or set BIN)" >&2; exit 1; }
[ -n "${SCENES:-}" ] || SCENES=$("$top/benches/learning/make-scenes.sh")
[ -f "${SCENES:-}/test.npy" ] || { echo "dense-scenes: set SCENES to the scenes folder (benches/learning/make-scenes.sh prints it)" >&2; exit 1; }
train=$(ls "$OUT"/data/train*.npy 2>/dev/null | grep -v -E '\.(masks|labels|boxes)\.npy$' | head -1 || true)
[ -n "$train" ] || train=$SCENES/train.npy
log() { echo "dense-scenes [$(date +%H:%M:%S)] $*" >&2; }
log "train $train, val $SCENES/test.npy, knn memory $MEMORY"
for dir in "$OUT"/runs/*-s[0-9]*; do
  name=$(basename "$dir")
  [ -n "${METHODS:-}" ] && ! grep -qw "${name%-s*}" <<<"$METHODS" && continue
  ckpt=$dir/run/ckpt/latest
  [ -e "$ckpt" ] || { log "$name: no checkpoint, skipped"; continue; }
  [ "$name" = "${name#random}" ] && [ ! -f "$dir/task_s" ] && { log "$name: pre-training not finished, skipped"; continue; }
  log "$name: start"
  "$BIN/dense-probe" --ckpt "$ckpt" --train-data "$train" --val-data "$SCENES/test.npy" --classes 11 \
    --resize 48 --crop 48 --memory-size "$MEMORY" --results "$OUT/dense.jsonl" -q >/dev/null 2>"$dir/dense.err" \
    || { log "$name: dense-probe failed (see $dir/dense.err)"; exit 1; }
  log "$name: done"
done
python3 - "$OUT/dense.jsonl" >"$OUT/dense.md" <<'EOF'
import json, re, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("event") != "result":
        continue
    m = re.search(r"runs/([a-z0-9-]+)-s(\d+)/", r["ckpt"])
    if not m:
        continue
    rows.setdefault(m.group(1), {}).setdefault(r["probe"], {})[int(m.group(2))] = r
names = {"random": "random init", "byol": "BYOL", "lewel-b": "LEWEL_B", "mocov2": "MoCo v2", "lewel-m": "LEWEL_M",
         "supervised": "supervised, all labels"}
def cell(by_seed, key):
    v = [by_seed[s][key] for s in sorted(by_seed)]
    if not v:
        return "—"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{sum(v) / len(v):.2f} ± {(max(v) - min(v)) / 2:.2f} ({', '.join(f'{x:.2f}' for x in v)})"
print("| backbone | seeds | linear mIoU % | linear pixel acc % | knn mIoU % | knn pixel acc % | knn garment IoU % (mean of 10) |")
print("|---|---|---|---|---|---|---|")
for key in ["random", "byol", "lewel-b", "mocov2", "lewel-m", "supervised"]:
    if key not in rows:
        continue
    lin, knn = rows[key].get("dense-linear", {}), rows[key].get("dense-knn", {})
    seeds = sorted(set(lin) | set(knn))
    for by in (knn,):
        for s in by:
            by[s]["garment_iou"] = sum(by[s].get(f"iou_pct_{c}", 0.0) for c in range(1, 11)) / 10
    print(f"| {names[key]} | {','.join(map(str, seeds))} | {cell(lin, 'miou_pct')} | {cell(lin, 'pixel_acc_pct')} "
          f"| {cell(knn, 'miou_pct')} | {cell(knn, 'pixel_acc_pct')} | {cell(knn, 'garment_iou')} |")
EOF
cat "$OUT/dense.md"
