#!/usr/bin/env bash
# The investigation of BENCHMARKS.md's learning comparison: variants of the small BYOL-family recipe,
# chosen on a HELD-OUT split of the training set, never on the test set. Pre-trains on the first 50,000
# Fashion-MNIST training images and follows the online kNN monitor (memory: those 50,000 with labels;
# queries: the other 10,000 training images) every 2 epochs.
#
#   scripts/learn-fmnist-sweep.sh                       # here (CPU: about 25 min per variant)
#   scripts/learn-fmnist.sh prepare-device              # then, on a lent GPU (carry target/learning):
#   LEWEL_BIN=target/learning/bin DATA=target/learning/data DEVICE=cuda JOBS=6 THREADS=2 OUT=$OUT \
#     scripts/learn-fmnist-sweep.sh                     # (LD_LIBRARY_PATH as learn-fmnist.sh device sets it)
#
# Knobs: DATA, OUT (default ./sweep-out), EPOCHS=8, SEED=1, DEVICE=cpu, JOBS=1, THREADS=0, VARIANTS (lines
# "NAME METHOD FLAGS..."; default below), PYTHON. OUT/sweep.md and OUT/sweep.json sum it up.
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${LEWEL_BIN:-$top/target/release}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-./sweep-out}
EPOCHS=${EPOCHS:-8}
SEED=${SEED:-1}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-1}
THREADS=${THREADS:-0}
PYTHON=${PYTHON:-python3}
VARIANTS=${VARIANTS:-"byol-preset byol
byol-lr0.1 byol --lr 0.1
byol-m0.999 byol --ema-momentum 0.999
byol-emaparams byol --ema params
lewel-b-preset lewel-b
lewel-b-lr0.1 lewel-b --lr 0.1"}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export BIN DATA OUT EPOCHS SEED DEVICE THREADS

if [ "${1:-}" = variant ]; then
  shift
  name=$1 method=$2; shift 2
  case $method in lewel-b) p=small-lewelb ;; byol) p=small-byol ;; lewel-m) p=small-lewelm ;; mocov2) p=small-mocov2 ;; esac
  echo "sweep: $name start" >&2
  "$BIN/pretrain" "$OUT/split/train50k-images-idx3-ubyte" --preset "$p" --epochs "$EPOCHS" --seed "$SEED" \
    --knn-every 2 --knn-train "$OUT/split/train50k-images-idx3-ubyte" --knn-val "$OUT/split/val10k-images-idx3-ubyte" \
    --device "$DEVICE" --threads "$THREADS" --log-every 20 --keep-last 1 -q "$@" --out "$OUT/$name" \
    >"$OUT/$name.jsonl" 2>"$OUT/$name.err"
  echo "sweep: $name exit $?" >&2
  exit 0
fi

"$PYTHON" - "$DATA" "$OUT/split" <<'PYEOF'
import gzip, os, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
def read(name):
    p = os.path.join(src, name)
    return gzip.open(p + ".gz").read() if os.path.exists(p + ".gz") else open(p, "rb").read()
im, lb = read("train-images-idx3-ubyte"), read("train-labels-idx1-ubyte")
for part, lo, hi in (("train50k", 0, 50000), ("val10k", 50000, 60000)):
    n = hi - lo
    open(f"{dst}/{part}-images-idx3-ubyte", "wb").write(im[:4] + n.to_bytes(4, "big") + im[8:16] + im[16 + lo * 784:16 + hi * 784])
    open(f"{dst}/{part}-labels-idx1-ubyte", "wb").write(lb[:4] + n.to_bytes(4, "big") + lb[8 + lo:8 + hi])
PYEOF
echo "sweep: $(echo "$VARIANTS" | wc -l) variants, $EPOCHS epochs, seed $SEED, device $DEVICE, $JOBS at a time" >&2
echo "$VARIANTS" | xargs -P "$JOBS" -L 1 "$0" variant
"$PYTHON" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
rows = []
for f in sorted(os.listdir(out)):
    if not f.endswith(".jsonl"):
        continue
    ev = [json.loads(l) for l in open(os.path.join(out, f)) if l.strip()]
    evals = [(e["epoch"] + 1, e["knn_top1_pct"]) for e in ev if e.get("event") == "eval"]
    epochs = [e["loss_mean"] for e in ev if e.get("event") == "epoch"]
    steps = [e for e in ev if e.get("event") == "step"]
    rows.append({"variant": f[:-6], "val_knn_by_epoch": evals, "epoch_loss": epochs,
                 "min_collapse_std": min((s["collapse_std"] for s in steps if "collapse_std" in s), default=None),
                 "final_collapse_std": steps[-1].get("collapse_std") if steps else None})
json.dump(rows, open(os.path.join(out, "sweep.json"), "w"), indent=1)
with open(os.path.join(out, "sweep.md"), "w") as f:
    f.write("| variant | val kNN top-1 % after epochs 2, 4, 6, 8 | loss by epoch | collapse std min / final |\n|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['variant']} | {', '.join(f'{v:.2f}' for _, v in r['val_knn_by_epoch'])} | "
                f"{', '.join(f'{v:.3f}' for v in r['epoch_loss'])} | {r['min_collapse_std'] or 0:.3f} / {r['final_collapse_std'] or 0:.3f} |\n")
print(open(os.path.join(out, "sweep.md")).read())
PYEOF
