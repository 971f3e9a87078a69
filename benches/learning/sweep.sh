#!/usr/bin/env bash
# The preset search of issue 17: variants of the small recipes, each pre-trained on a TRAINING split and scored
# by a kNN probe (k 20, T 0.07) of its final backbone with the labelled training split as the memory and a
# HELD-OUT split of the training images as the queries. The test split is never read here.
#
#   benches/learning/sweep.sh fmnist      # Fashion-MNIST: 10,000 of the training images to pre-train on and as
#                                         # the memory, 5,000 others as the held-out queries (IDX, made here)
#   benches/learning/sweep.sh scenes      # the where-to-learn scenes (benches/learning/make-scenes.sh): their
#                                         # train split (TRAIN_N: its first TRAIN_N scenes), queries from their
#                                         # held-out split
#
# Each variant is a line "NAME FLAGS..." of pretrain flags (VARIANTS, or the file VARIANTS_FILE); "init" in the
# flags' place scores the random backbone (--max-steps 0 of the first variant's preset and seed). A finished
# variant is not run again. OUT/sweep.jsonl gets one line per variant (held-out kNN, the last step's and the
# run's lowest collapse indicators, the target's, the update ratio, the map entropy, collapse warnings, time),
# OUT/sweep.md the table. Knobs: OUT (default ./sweep-out), BIN (target/release), EPOCHS=10, BATCH=128, SEED=1,
# DEVICE=cpu, THREADS=0, PYTHON.
set -u
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$top/target/release}
OUT=${OUT:-./sweep-out}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-128}
SEED=${SEED:-1}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}
PYTHON=${PYTHON:-$top/.venv/bin/python}
bench=${1:?usage: sweep.sh fmnist|scenes}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
say() { printf 'sweep [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case $bench in
  fmnist)
    FM=${FMNIST:-/usr/share/datasets/fashion-mnist}
    [ -f "$FM/train-images-idx3-ubyte.gz" ] || { echo "sweep: no Fashion-MNIST in $FM (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
    split=$OUT/split
    for part in "tr10k 0 10000" "ho5k 50000 55000"; do
      set -- $part
      [ -f "$split/$1-images-idx3-ubyte" ] ||
        "$PYTHON" "$top/benches/learning/subset.py" "$FM/train-images-idx3-ubyte.gz" "$2" "$3" "$split/$1-images-idx3-ubyte" || exit 1
    done
    TRAIN=$split/tr10k-images-idx3-ubyte QUERY=$split/ho5k-images-idx3-ubyte ;;
  scenes)
    dir=${SCENES:-$("$top/benches/learning/make-scenes.sh")} || exit 1
    TRAIN=$dir/train.npy QUERY=$dir/heldout.npy
    if [ -n "${TRAIN_N:-}" ]; then  # pre-train on (and take the memory from) the first TRAIN_N train scenes only
      sub=$OUT/split/train-first$TRAIN_N.npy
      [ -f "$sub" ] || "$PYTHON" "$top/benches/learning/subset.py" "$TRAIN" 0 "$TRAIN_N" "$sub" || exit 1
      TRAIN=$sub
    fi ;;
  *) echo "sweep: unknown benchmark $bench (fmnist or scenes)" >&2; exit 2 ;;
esac

if [ -n "${VARIANTS_FILE:-}" ]; then VARIANTS=$(cat "$VARIANTS_FILE"); fi
VARIANTS=${VARIANTS:?give VARIANTS (lines NAME FLAGS...) or VARIANTS_FILE}
first_flags=$(echo "$VARIANTS" | grep -v '^\s*$' | grep -v ' init$' | head -1 | cut -d' ' -f2-)

# row NAME RUN SECONDS: embed the memory and queries with RUN's final backbone, kNN, one JSON line.
row() {
  local name=$1 run=$2 secs=$3 ev=$OUT/$1/eval
  mkdir -p "$ev"
  "$BIN/embed" --ckpt "$run" --data "$TRAIN" --out "$ev/mem.npy" --device "$DEVICE" --threads "$THREADS" -q >/dev/null &&
    "$BIN/embed" --ckpt "$run" --data "$QUERY" --out "$ev/query.npy" --device "$DEVICE" --threads "$THREADS" -q >/dev/null &&
    "$BIN/knn-probe" --train-features "$ev/mem.npy" --val-features "$ev/query.npy" --k 20 --temperature 0.07 \
      --device "$DEVICE" --out "$ev/knn.json" -q >/dev/null || return 1
  rm -f "$ev"/*.npy
  "$PYTHON" - "$name" "$run" "$ev/knn.json" "$secs" <<'PYEOF'
import json, sys
name, run, knn, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
rec = {"variant": name, "heldout_knn_pct": json.load(open(knn))["best"]["top1_pct"], "seconds": round(secs)}
steps, warns = [], 0
try:
    for line in open(f"{run}/events.jsonl"):
        e = json.loads(line)
        if e["event"] == "step": steps.append(e)
        elif e["event"] == "warn" and "collapsed" in e.get("message", ""): warns += 1
        elif e["event"] == "start": rec["flags"] = {k: e[k] for k in e if k.startswith(("optim.", "model.ema", "lr", "ema_", "warmup", "epochs", "batch"))}
except FileNotFoundError:
    pass
if steps:
    last = steps[-1]
    for k in ("loss", "collapse_std", "target_collapse_std", "update_ratio_median", "update_ratio_min", "map_entropy_ratio"):
        if k in last: rec[k] = last[k]
    rec["min_collapse_std"] = min(s["collapse_std"] for s in steps)
    rec["steps"] = last["step"]
rec["collapse_warnings"] = warns
print(json.dumps(rec))
PYEOF
}

say "$bench: $(echo "$VARIANTS" | grep -vc '^\s*$') variants, $EPOCHS epochs, batch $BATCH, seed $SEED ($TRAIN, held-out $QUERY)"
echo "$VARIANTS" | while read -r name flags; do
  [ -n "$name" ] || continue
  if grep -q "\"variant\": \"$name\"" "$OUT/sweep.jsonl" 2>/dev/null; then say "$name: done before"; continue; fi
  rm -rf "${OUT:?}/$name" && mkdir -p "$OUT/$name"
  t=$(date +%s)
  if [ "$flags" = init ]; then
    # shellcheck disable=SC2086
    "$BIN/pretrain" "$TRAIN" $first_flags --seed "$SEED" --max-steps 0 -q --out "$OUT/$name/run" >/dev/null 2>"$OUT/$name/err" </dev/null
  else
    say "$name: $flags"
    # shellcheck disable=SC2086
    "$BIN/pretrain" "$TRAIN" --epochs "$EPOCHS" --batch-size "$BATCH" --seed "$SEED" $flags --log-every 10 \
      --keep-last 1 --device "$DEVICE" --threads "$THREADS" -q --out "$OUT/$name/run" >/dev/null 2>"$OUT/$name/err" </dev/null
  fi
  rc=$?
  if [ $rc != 0 ]; then say "$name: pretrain exit $rc ($(tail -1 "$OUT/$name/err"))"; continue; fi
  line=$(row "$name" "$OUT/$name/run" $(( $(date +%s) - t ))) || { say "$name: evaluation failed"; continue; }
  echo "$line" >>"$OUT/sweep.jsonl"
  say "$name: $line"
  rm -f "$OUT/$name"/run/ckpt/*.safetensors.tmp*
done

"$PYTHON" - "$OUT/sweep.jsonl" >"$OUT/sweep.md" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
print("| variant | held-out kNN % | collapse std (last / min) | target std | update ratio (median / min) | map entropy | warnings | s |")
print("|---|---|---|---|---|---|---|---|")
f = lambda r, k, p=4: (f"{r[k]:.{p}f}" if k in r else "-")
for r in rows:
    print(f"| {r['variant']} | {r['heldout_knn_pct']:.2f} | {f(r,'collapse_std')} / {f(r,'min_collapse_std')} | {f(r,'target_collapse_std')} | "
          f"{f(r,'update_ratio_median',5)} / {f(r,'update_ratio_min',5)} | {f(r,'map_entropy_ratio')} | {r['collapse_warnings']} | {r['seconds']} |")
PYEOF
cat "$OUT/sweep.md" >&2
