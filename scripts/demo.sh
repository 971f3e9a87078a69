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

STEPS=${DEMO_STEPS:-600}
# The budget of the Fashion-MNIST comparison in BENCHMARKS.md, cut to fit a few minutes: width 8, and the first
# STEPS steps of a 4-epoch schedule (so the lr warms up over them, as it does there; no warm-up at lr 2 from the
# first step lost 3.6 kNN points at 200 steps).
FLAGS=(--preset small-lewelb --width 8)
# The random backbone the run starts from (--max-steps 0: the same seed, so the same weights), evaluated the
# same way: what the pre-training must beat.
rm -rf "$OUT/run" "$OUT/init"
stage pretrain-init "$BIN/pretrain" "$TRAIN" "${FLAGS[@]}" --max-steps 0 -q --out "$OUT/init" >"$OUT/init.jsonl"
say "pretrain runs the first $STEPS steps of a 4-epoch schedule; where they end inside its 1-epoch warm-up, the warn event saying so is expected"
stage pretrain "$BIN/pretrain" "$TRAIN" "${FLAGS[@]}" --epochs 4 --max-steps "$STEPS" \
  --log-every 10 --out "$OUT/run" >"$OUT/pretrain.jsonl"
# evaluate NAME CKPT: the two probes of CKPT's backbone (features of both splits, kNN, linear).
evaluate() {
  local n=$1 ck=$2
  stage "embed-train$n" "$BIN/embed" --ckpt "$ck" --data "$TRAIN" --out "$OUT/train$n.npy" >"$OUT/embed-train$n.jsonl"
  stage "embed-val$n" "$BIN/embed" --ckpt "$ck" --data "$VAL" --out "$OUT/val$n.npy" >"$OUT/embed-val$n.jsonl"
  stage "linear-probe$n" "$BIN/linear-probe" --train-features "$OUT/train$n.npy" --val-features "$OUT/val$n.npy" --out "$OUT/probe$n.json" >"$OUT/probe$n.jsonl"
  stage "knn-probe$n" "$BIN/knn-probe" --train-features "$OUT/train$n.npy" --val-features "$OUT/val$n.npy" --k 20 >"$OUT/knn$n.jsonl"
}
evaluate "" "$OUT/run"
evaluate -init "$OUT/init"
stage export-backbone "$BIN/export-backbone" --ckpt "$OUT/run" --format safetensors --out "$OUT/backbone.safetensors" --verify >"$OUT/export.jsonl"
stage viz-maps "$BIN/viz-maps" --ckpt "$OUT/run" --data "$top/fixtures/photos-96" --maps top:8 --grid --out "$OUT/maps" >"$OUT/maps.jsonl"
stage plot-events "$BIN/plot-events" "$OUT/run/events.jsonl" --out "$OUT/curves.png" >"$OUT/plot.jsonl"

say "outputs are in $OUT"
# The numbers, from the tools' own JSON lines (their `end` events).
if command -v python3 >/dev/null; then
  python3 - "$OUT" "$STEPS" <<'PYEOF'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
def end(name):
    return [e for e in map(json.loads, open(f"{out}/{name}.jsonl")) if e["event"] == "end"][-1]
p, k, p0, k0, m = end("probe"), end("knn"), end("probe-init"), end("knn-init"), end("maps")
print("demo: %-40s %8s %8s" % ("backbone", "kNN %", "linear %"))
print("demo: %-40s %8.1f %8.1f" % ("random initialisation (same seed)", k0["best_top1_pct"], p0["final_top1_pct"]))
print("demo: %-40s %8.1f %8.1f" % (f"pre-trained, {steps} steps, small-lewelb w8", k["best_top1_pct"], p["final_top1_pct"]))
dk, dl = k["best_top1_pct"] - k0["best_top1_pct"], p["final_top1_pct"] - p0["final_top1_pct"]
verdict = "learned" if dk > 0 and dl > 0 else "did NOT beat its random initialisation"
print("demo: the pre-training %s: %+.1f kNN, %+.1f linear points (kNN k=%d, T=%g; linear: final epoch)"
      % (verdict, dk, dl, k["best_k"], k["best_temperature"]))
print("demo: alignment maps: mean entropy %.3f of a uniform %.3f nats (ratio %.3f; 1 = uniform)"
      % (m["mean_entropy_nats"], m["max_entropy_nats"], m["entropy_ratio"]))
PYEOF
fi
for f in curves.png maps/grid.png; do
  if [ -f "$OUT/$f" ]; then say "picture: $OUT/$f"; fi
done
