# The learning guard (issues 11 and 17): a short pre-training on the 2,000-image Fashion-MNIST fixture must lift the
# kNN accuracy of the backbone (k 20, T 0.07, memory: the 2,000 training images, queries: the 1,000 test
# images) above the same backbone at initialisation by MARGIN points. A regression test of learning, not of
# timing: about a minute on 2 cores.
#
# Two families, one script: FAMILY=moco (this file, run by e2e) and FAMILY=byol (learning-guard-byol.sh).
#
# moco: LEWEL_M, ResNet-18 width 8, batch 64, 12 epochs (372 steps), queue 1024, EMA momentum 0.9. Measured on
# the 2-core build machine, 2026-11-26, debug build: initialisation 64.4 %, trained 77.4 % (+13.0). With the
# bugs LEWEL_FAULT injects (lib/src/fault.rs): detach-backbone 42.0 % (-22.4), frozen-ema 70.9 % (+6.5),
# negated-loss 49.8 % (-14.6; 60.9 % with the release build, where the rest is the same: the ascent is
# chaotic). MARGIN 9.5 sits between the frozen EMA (the hardest to catch: MoCo still learns something against
# a random key encoder) and the real run.
#
# byol: LEWEL_B from the small-lewelb preset (the held-out search of benches/learning/2026-12-07-cpu-guard-sweep:
# LARS eta 0.02 clipped, lr 2, EMA of the parameters at 0.9), width 8, batch 64; its figures are in
# learning-guard-byol.sh.
#
# GUARD_CONTROLS=1 also runs the three faulty trainings and requires each one to MISS the margin (3 more
# minutes per family): `make guard-controls`.
set -euo pipefail
F=$FIXTURES/fashion-mnist-2k
TRAIN=$F/train-images-idx3-ubyte.gz TEST=$F/t10k-images-idx3-ubyte.gz
case ${FAMILY:-moco} in
  moco)
    MARGIN=${MARGIN:-9.5}
    RECIPE=(--preset small-lewelm --width 8 --batch-size 64 --epochs 12 --queue-size 1024 --ema-momentum 0.9
      --device cpu --log-every 31 --quiet) ;;
  byol)
    MARGIN=${MARGIN:-$BYOL_MARGIN}
    RECIPE=(--preset small-lewelb --width 8 --batch-size 64 --epochs "$BYOL_EPOCHS" --device cpu --log-every 31 --quiet) ;;
  *) echo "unknown FAMILY=$FAMILY (moco or byol)"; exit 2 ;;
esac

knn() { # knn RUN: top-1 % of the weighted kNN of RUN's newest checkpoint on the fixture
  "$BIN/knn-probe" --ckpt "$1/ckpt/latest" --train-data "$TRAIN" --val-data "$TEST" --k 20 --temperature 0.07 --device cpu -q |
    jq -r 'select(.event == "end") | .best_top1_pct'
}
# falls EVENTS: the last epoch's mean loss lies in [0, half the first epoch's] (the BYOL family's loss is >= 0)
falls() { jq -s '[.[] | select(.event == "epoch") | .loss_mean] | .[-1] >= 0 and .[-1] <= .[0] / 2' "$1" | grep -q true; }
above() { awk -v a="$1" -v b="$2" -v m="$MARGIN" 'BEGIN { exit !(a >= b + m) }'; }

"$BIN/pretrain" "$TRAIN" "${RECIPE[@]}" --max-steps 0 --out init >/dev/null
init=$(knn init)
[[ $init =~ ^[0-9.]+$ ]] || { echo "FAIL: no kNN accuracy for the initialisation: $init"; exit 1; }
echo "initialisation: kNN top-1 $init %"

train() { # train NAME [FAULT]: pre-train with the guard's recipe, print the kNN top-1 (or "failed")
  if LEWEL_FAULT=${2:-} "$BIN/pretrain" "$TRAIN" "${RECIPE[@]}" --out "$1" >"$1.jsonl" 2>"$1.err"; then
    knn "$1"
  else
    echo "failed (exit $?: $(tail -n 1 "$1.err"))"
  fi
}

trained=$(train run)
echo "trained: kNN top-1 $trained % (must be at least $init + $MARGIN)"
[[ $trained =~ ^[0-9.]+$ ]] || { echo "FAIL: no kNN accuracy for the trained backbone"; exit 1; }
jq -c 'select(.event == "epoch") | [.epoch, .loss_mean]' run.jsonl | tr '\n' ' '
echo
above "$trained" "$init" || { echo "FAIL: the pre-training did not lift kNN by $MARGIN points"; exit 1; }
if [ "${FAMILY:-moco}" = byol ]; then
  falls run.jsonl || { echo "FAIL: the loss did not fall to half its first epoch's mean"; exit 1; }
fi

if [ "${GUARD_CONTROLS:-0}" = 1 ]; then
  for fault in detach-backbone frozen-ema negated-loss; do
    got=$(train "ctl-$fault" "$fault")
    echo "control $fault: kNN top-1 $got %"
    case $got in failed*) continue ;; esac
    if above "$got" "$init" && { [ "${FAMILY:-moco}" != byol ] || falls "ctl-$fault.jsonl"; }; then
      echo "FAIL: the guard misses $fault"; exit 1
    fi
  done
fi
echo "learning guard: ok"
