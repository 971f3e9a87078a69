# The where-to-learn scenes (benches/learning/make-scenes.sh), tiny: the files and their shapes, masks inside
# their boxes, a second generation byte-identical and served from the cache, test photos never used by train or
# held-out, the tools reading the images with their labels (NAME.labels.npy), and the clear errors when the
# photos or Fashion-MNIST are missing.
set -euo pipefail
top=$(cd "$FIXTURES/.." && pwd)
gen=$top/benches/learning/make-scenes.sh
py=$top/.venv/bin/python
small=(--n-train 120 --n-heldout 40 --n-test 40 --size 48)

# missing inputs: exit 1, naming the package
for bad in "--photos $TMP/none" "--fmnist $TMP/none"; do
  # shellcheck disable=SC2086
  if LEWEL_CACHE=$TMP/cache "$gen" "${small[@]}" $bad >out.txt 2>err.txt; then echo "FAIL: $bad succeeded"; exit 1; fi
  grep -q "apt-get install" err.txt || { echo "FAIL: $bad: no install hint"; cat err.txt; exit 1; }
done
grep -q "dataset-fashion-mnist" err.txt || { echo "FAIL: the missing Fashion-MNIST error names no package"; exit 1; }

a=$(LEWEL_CACHE=$TMP/cache "$gen" "${small[@]}" 2>gen1.err)
[ -f "$a/complete" ] || { echo "FAIL: no complete stamp in $a"; cat gen1.err; exit 1; }
b=$(LEWEL_CACHE=$TMP/cache "$gen" "${small[@]}" 2>gen2.err)
[ "$a" = "$b" ] || { echo "FAIL: the cache gave another folder: $a vs $b"; exit 1; }
c=$("$gen" "${small[@]}" --out "$TMP/again" 2>gen3.err)
for f in train.npy train.labels.npy train.masks.npy train.boxes.npy test.npy heldout.labels.npy; do
  cmp -s "$a/$f" "$c/$f" || { echo "FAIL: $f differs between two generations"; exit 1; }
done
"$py" - "$a" <<'PYEOF'
import json, sys, numpy as np
d = sys.argv[1]
meta = json.load(open(f"{d}/meta.json"))
for s, n in (("train", 120), ("heldout", 40), ("test", 40)):
    x, y, m, b = (np.load(f"{d}/{s}{k}.npy") for k in ("", ".labels", ".masks", ".boxes"))
    assert x.shape == (n, 48, 48, 3) and x.dtype == np.uint8, (s, x.shape, x.dtype)
    assert y.shape == (n,) and y.dtype == np.int64 and y.min() >= 0 and y.max() <= 9, s
    assert m.shape == (n, 48, 48) and b.shape == (n, 4), s
    for i in range(n):
        x0, y0, x1, y1 = b[i]
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48, (s, i, b[i])
        assert set(np.unique(m[i])) <= {0, y[i] + 1}, (s, i)
        assert (m[i] > 0).sum() > 0, (s, i, "empty mask")
        inside = np.zeros((48, 48), bool); inside[y0:y1, x0:x1] = True
        assert not (m[i][~inside] > 0).any(), (s, i, "mask outside its box")
photos = meta["photos"]
assert not set(photos["test"]) & set(photos["train"]), photos
print("scenes: shapes, labels, masks and boxes ok;", len(photos["train"]), "train photos,", len(photos["test"]), "test photos")
PYEOF
# the tools read the images with their labels
"$BIN/pretrain" "$a/train.npy" --preset small-lewelb --width 4 --proj-dim 16 --hidden-dim 32 --size 48 --batch-size 40 \
  --max-steps 1 --device cpu -q --out run >/dev/null
"$BIN/knn-probe" --ckpt run/ckpt/latest --train-data "$a/train.npy" --val-data "$a/test.npy" --k 5 --device cpu -q >knn.jsonl
got=$(jq -r 'select(.event == "end") | .best_top1_pct' knn.jsonl)
[[ $got =~ ^[0-9.]+$ ]] || { echo "FAIL: knn-probe on the scenes gave no accuracy"; cat knn.jsonl; exit 1; }
jq -r 'select(.event == "start") | .train_labels' knn.jsonl | grep -q "train.labels.npy" ||
  { echo "FAIL: knn-probe did not read train.labels.npy"; exit 1; }
echo "scenes: ok"
