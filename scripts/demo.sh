#!/usr/bin/env bash
# The demo: the real pipeline on Fashion-MNIST (the Debian package when installed, else the bundled
# fixtures), with release binaries. Runs every stage whose tool exists and says which are missing.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${LEWEL_BIN:-$top/target/release}
OUT=${DEMO_OUT:-$top/demo-out}
mkdir -p "$OUT"
say() { printf '\ndemo: %s\n' "$*" >&2; }

if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  DATA=/usr/share/datasets/fashion-mnist
  say "data: Fashion-MNIST from the Debian package dataset-fashion-mnist (60,000 train / 10,000 test)"
  TRAIN=$DATA/train-images-idx3-ubyte.gz VAL=$DATA/t10k-images-idx3-ubyte.gz
else
  DATA=$top/fixtures/fashion-mnist-tiny
  TRAIN=$DATA/train-images-idx3-ubyte VAL=$DATA/t10k-images-idx3-ubyte
  say "the Debian package dataset-fashion-mnist is missing: using the bundled 200-image fixtures"
fi

# stage NAME CMD...: runs one stage, its stderr also kept in OUT/NAME.stderr.
stage() {
  local name=$1; shift
  say "$name: $*"
  local err=$OUT/$name.stderr
  if "$@" 2> >(tee "$err" >&2); then return 0; fi
  say "$name failed; see $err"
  exit 1
}

STEPS=${DEMO_STEPS:-100}
rm -rf "$OUT/run"
stage pretrain "$BIN/pretrain" "$TRAIN" --preset small-lewelb --epochs 1 --warmup-epochs 0 --max-steps "$STEPS" \
  --log-every 10 --out "$OUT/run" >"$OUT/pretrain.jsonl"
stage embed-train "$BIN/embed" --ckpt "$OUT/run" --data "$TRAIN" --out "$OUT/train.npy" >"$OUT/embed-train.jsonl"
stage embed-val "$BIN/embed" --ckpt "$OUT/run" --data "$VAL" --out "$OUT/val.npy" >"$OUT/embed-val.jsonl"
stage linear-probe "$BIN/linear-probe" --train-features "$OUT/train.npy" --val-features "$OUT/val.npy" --out "$OUT/probe.json" >"$OUT/probe.jsonl"
stage knn-probe "$BIN/knn-probe" --train-features "$OUT/train.npy" --val-features "$OUT/val.npy" --k 20 >"$OUT/knn.jsonl"
stage export-backbone "$BIN/export-backbone" --ckpt "$OUT/run" --format safetensors --out "$OUT/backbone.safetensors" --verify >"$OUT/export.jsonl"
stage viz-maps "$BIN/viz-maps" --ckpt "$OUT/run" --data "$top/fixtures/photos-96" --maps top:8 --grid --out "$OUT/maps" >"$OUT/maps.jsonl"
stage plot-events "$BIN/plot-events" "$OUT/run/events.jsonl" --out "$OUT/curves.png" >"$OUT/plot.jsonl"

say "outputs are in $OUT"
# The numbers, from the tools' own JSON lines (their `end` events).
if command -v python3 >/dev/null; then
  python3 - "$OUT/probe.jsonl" "$OUT/knn.jsonl" "$OUT/maps.jsonl" <<'PYEOF'
import json, sys
def end(path):
    return [e for e in map(json.loads, open(path)) if e["event"] == "end"][-1]
p, k, m = (end(a) for a in sys.argv[1:])
print("demo: linear probe top-1 %.1f%% at the final epoch (%.1f%% at the best epoch, chosen on val: optimistic)"
      % (p["final_top1_pct"], p["best_top1_pct"]))
print("demo: kNN (k=%d, T=%g) top-1 %.1f%%" % (k["best_k"], k["best_temperature"], k["best_top1_pct"]))
print("demo: alignment maps: mean entropy %.3f of a uniform %.3f nats (ratio %.3f; 1 = uniform)"
      % (m["mean_entropy_nats"], m["max_entropy_nats"], m["entropy_ratio"]))
PYEOF
fi
for f in curves.png maps/grid.png; do
  if [ -f "$OUT/$f" ]; then say "picture: $OUT/$f"; fi
done
