#!/usr/bin/env python3
"""make-scenes: the "where-to-learn" benchmark. Fashion-MNIST garments, tinted, composited onto random crops
of natural photos. A label says which garment is in the picture. The background is a large nuisance that
carries no label, so a method has to find the object to do well. Raw pixels score far below their 84.6 %
kNN on plain Fashion-MNIST.

Provenance and licences (nothing is downloaded; both inputs are Debian packages):
  * Fashion-MNIST (Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/*-ubyte.gz):
    Copyright 2017 Zalando SE, MIT (Expat) licence. https://github.com/zalandoresearch/fashion-mnist
  * the natural photos (Debian package mate-backgrounds, /usr/share/backgrounds/mate/nature/*.jpg):
    MATE Backgrounds, GPL-2+ per /usr/share/doc/mate-backgrounds/copyright (the copyright holders of each
    photo are listed there).
  The generated images are derived from both, so they carry both licences (GPL-2+ for the photo part).
  That is fine for a local benchmark cache. Do not commit them to the repository.

Usage (the project's venv: numpy and Pillow; torch only for --baselines). benches/learning/make-scenes.sh
finds that Python and runs this file with the same arguments:
    benches/learning/make-scenes.sh                      # generate (or reuse) the defaults; prints the folder
    benches/learning/make-scenes.sh --size 64 --seed 1   # another variant, in its own cached folder
    benches/learning/make-scenes.sh --out /tmp/scenes    # an explicit folder instead of the cache
    benches/learning/make-scenes.sh --baselines          # raw-pixel kNN and logistic regression, one JSON line
    benches/learning/make-scenes.sh --baselines DIR      # the same, for an already generated folder DIR

Stdout gets exactly one line: the folder (or the JSON line with --baselines). Progress goes to stderr. The
default folder is ${LEWEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/lewel}/scenes-<hash>. <hash> is a short sha256
of every generation parameter, the sha256 of every input file, the numpy and Pillow versions and GENERATOR
VERSION. A folder whose `complete` stamp records the same parameters is reused as it is. Otherwise the
folder is built in a temporary sibling and renamed into place. The same arguments and inputs give
byte-identical files.

Output layout, for each split S in train, heldout, test:
    S.npy          uint8 [N, H, W, 3]   the images (RGB)
    S.labels.npy   int64 [N]            Fashion-MNIST class 0..9
    S.masks.npy    uint8 [N, H, W]      0 background, 1 + class where the resized garment's intensity >= 32
    S.boxes.npy    int32 [N, 4]         x0, y0, x1, y1 (exclusive) of the pasted garment square
  plus meta.json (parameters, seed, inputs, photo names per split, counts, class counts, sha256 of each
  file), preview.png (the first 64 train images, 8 per row, each row followed by a row of its masks coloured
  by class) and `complete` (the stamp: the recorded parameters, written last).

Generation (one numpy Generator seeded by --seed drives everything, in this order):
  * photos: the image files of --photos sorted by name, permuted. The first round(25 %) (at least 1) are the
    test photos and the rest the train photos. The train photos serve train and heldout, and no photo is in
    both groups. Each photo is loaded once, converted to RGB and resized (LANCZOS) to a short side of 256 px.
  * splits: train = N_train garments drawn without replacement from Fashion-MNIST train 0..49999,
    heldout = N_heldout from train 50000..59999, test = N_test from t10k.
  * background: a photo of the split's group, a square crop of side U[0.25, 0.6] x the short side at a
    uniform position, resized to HxW (BILINEAR), flipped left-right with probability 1/2.
  * garment: the 28x28 image resized (BILINEAR) to s = round(U[scale_min, scale_max] x H) and pasted at a
    uniform position fully inside the picture. Its tint c is uniform in [0.5, 1]^3. With g its intensity / 255:
      - blend "opaque" (the default, version 3): the garment covers the background and keeps its own shading.
        alpha a = clip((255 g - 16) / 48, 0, 1) (0 below intensity 16, 1 from 64), colour 255 c (0.35 + 0.65 g);
        out = a * colour + (1 - a) * background, rounded. A supervised CNN (6 conv layers, width 32-256, Adam,
        3 epochs on 10,000 train images; benches/learning/supervised-cnn.py) reaches 68.6 % on held-out and 53.7 % on test (the test photos are
        new backgrounds), raw pixels 28 % / 21 % kNN.
      - blend "intensity" (version 2): a = g, colour 255 c (a flat tint). Dark and mid-grey garment parts
        are see-through, and supervised learning got little from them (a width-8 ResNet fine-tuned on all labels for
        3 epochs: 22 % on test).
    (Version 1 tinted the garment by its intensity too, a * (255 a c): mid-grey garment parts then vanished into
    the background, and a small supervised CNN reached only 27 % after 2 epochs.)
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image

GENERATOR = "lewel-make-scenes"
VERSION = 3
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
PHOTOS_DEFAULT = "/usr/share/backgrounds/mate/nature"
PHOTO_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
PHOTO_SHORT = 256
CROP_MIN, CROP_MAX = 0.25, 0.6
TINT_MIN, TINT_MAX = 0.5, 1.0
TEST_PHOTO_FRACTION = 0.25
MASK_THRESHOLD = 32
# blend "opaque" (version 3): alpha ramps from 0 at intensity OPAQUE_LO to 1 at OPAQUE_HI, and the garment keeps its
# own shading: colour = 255 tint (SHADE + (1 - SHADE) g / 255)
OPAQUE_LO, OPAQUE_HI, SHADE = 16, 64, 0.35
BLENDS = ("opaque", "intensity")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
# tab10, for the masks of the preview (class k gets PALETTE[k])
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)
SPLITS = ("train", "heldout", "test")
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def say(msg):
    print(f"make-scenes: {msg}", file=sys.stderr, flush=True)


def die(msg, code=1):
    print(f"make-scenes: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- inputs ---------------------------------------------------------------------------------------------------
def fmnist_paths(folder):
    """The four IDX files of FOLDER (each NAME.gz or NAME), or exit 1 naming the Debian package."""
    paths = {}
    for name in FMNIST_FILES:
        for cand in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
            if os.path.isfile(cand):
                paths[name] = cand
                break
        else:
            die(f"no Fashion-MNIST {name}[.gz] in {folder} (apt-get install dataset-fashion-mnist, or "
                f"scripts/setup.sh, or --fmnist DIR)")
    return paths


def read_idx(path, magic):
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    got = int.from_bytes(raw[0:4], "big")
    if got != magic:
        die(f"{path}: not an IDX file of the expected kind (magic {got}, wanted {magic})")
    n = int.from_bytes(raw[4:8], "big")
    if magic == 2051:
        h, w = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        a = np.frombuffer(raw, np.uint8, offset=16)
        if a.size != n * h * w:
            die(f"{path}: truncated ({a.size} bytes of pixels, wanted {n * h * w})")
        return a.reshape(n, h, w)
    a = np.frombuffer(raw, np.uint8, offset=8)
    if a.size != n:
        die(f"{path}: truncated ({a.size} labels, wanted {n})")
    return a


def photo_files(folder):
    """The photo file names of FOLDER, sorted, or exit 1 naming the Debian package."""
    names = []
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder)
                       if not n.startswith(".") and n.lower().endswith(PHOTO_EXT)
                       and os.path.isfile(os.path.join(folder, n)))
    if len(names) < 2:
        die(f"{'only one photo' if names else 'no photos'} in {folder}, at least 2 are needed "
            f"(apt-get install mate-backgrounds, or bash scripts/photos.sh, or --photos DIR)")
    return names


def load_photo(path):
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        k = PHOTO_SHORT / min(w, h)
        size = (PHOTO_SHORT, max(PHOTO_SHORT, round(h * k))) if w <= h else (max(PHOTO_SHORT, round(w * k)), PHOTO_SHORT)
        return im.resize(size, Image.LANCZOS)


# --- parameters and cache -------------------------------------------------------------------------------------
def parameters(args, fm, photos):
    """Everything the output depends on. Its hash names the default folder and `complete` records it."""
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": args.seed,
        "size": args.size,
        "n_train": args.n_train,
        "n_heldout": args.n_heldout,
        "n_test": args.n_test,
        "scale_min": args.scale_min,
        "scale_max": args.scale_max,
        "crop_min": CROP_MIN,
        "crop_max": CROP_MAX,
        "tint_min": TINT_MIN,
        "tint_max": TINT_MAX,
        "photo_short_side": PHOTO_SHORT,
        "test_photo_fraction": TEST_PHOTO_FRACTION,
        "mask_threshold": MASK_THRESHOLD,
        "blend": args.blend,
        **({"opaque_lo": OPAQUE_LO, "opaque_hi": OPAQUE_HI, "shade": SHADE} if args.blend == "opaque" else {}),
        "fmnist_sha256": {n: sha256_file(p) for n, p in sorted(fm.items())},
        "photos_sha256": {n: sha256_file(os.path.join(args.photos, n)) for n in photos},
        "numpy": np.__version__,
        "pillow": Image.__version__,
    }


def params_key(params):
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def cache_root():
    if os.environ.get("LEWEL_CACHE"):
        return os.environ["LEWEL_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lewel")


def read_stamp(folder):
    try:
        with open(os.path.join(folder, "complete")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_ours(folder):
    """True when FOLDER was written by this generator (complete or not), so replacing it loses nothing."""
    if read_stamp(folder) is not None:
        return True
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return json.load(f).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


# --- generation -----------------------------------------------------------------------------------------------
def draw_split(rng, n, pool_lo, pool_hi, photos, size, scale_min, scale_max):
    """The random choices of one split, all drawn up front (a fixed order, so the output is reproducible)."""
    pick = rng.choice(np.arange(pool_lo, pool_hi), size=n, replace=False)
    photo = rng.integers(0, len(photos), n)
    pw = np.array([p.size[0] for p in photos])[photo]
    ph = np.array([p.size[1] for p in photos])[photo]
    short = np.minimum(pw, ph)
    side = np.rint(rng.uniform(CROP_MIN, CROP_MAX, n) * short).astype(np.int64).clip(1, short)
    cx = rng.integers(0, pw - side + 1)
    cy = rng.integers(0, ph - side + 1)
    flip = rng.random(n) < 0.5
    s = np.rint(rng.uniform(scale_min, scale_max, n) * size).astype(np.int64).clip(1, size)
    gx = rng.integers(0, size - s + 1)
    gy = rng.integers(0, size - s + 1)
    tint = rng.uniform(TINT_MIN, TINT_MAX, (n, 3)).astype(np.float32)
    return dict(pick=pick, photo=photo, side=side, cx=cx, cy=cy, flip=flip, s=s, gx=gx, gy=gy, tint=tint)


def render_split(d, images, labels, photos, size, name, blend):
    n = len(d["pick"])
    bg = np.empty((n, size, size, 3), np.uint8)
    canvas = np.zeros((n, size, size), np.uint8)  # the resized garment at its place, 0 elsewhere
    t = time.time()
    for i in range(n):
        x, y, side = int(d["cx"][i]), int(d["cy"][i]), int(d["side"][i])
        crop = photos[d["photo"][i]].resize((size, size), Image.BILINEAR, box=(x, y, x + side, y + side))
        a = np.asarray(crop)
        bg[i] = a[:, ::-1] if d["flip"][i] else a
        s, gx, gy = int(d["s"][i]), int(d["gx"][i]), int(d["gy"][i])
        g = Image.fromarray(images[d["pick"][i]]).resize((s, s), Image.BILINEAR)
        canvas[i, gy:gy + s, gx:gx + s] = np.asarray(g)
        if (i + 1) % 10000 == 0:
            say(f"{name}: {i + 1}/{n} backgrounds and garments ({time.time() - t:.1f}s)")
    out = np.empty_like(bg)
    for lo in range(0, n, 2048):  # the blend, vectorised, in chunks
        hi = min(n, lo + 2048)
        g = canvas[lo:hi, :, :, None].astype(np.float32) * np.float32(1 / 255)
        if blend == "opaque":
            a = ((g - np.float32(OPAQUE_LO / 255)) * np.float32(255 / (OPAQUE_HI - OPAQUE_LO))).clip(0, 1)
            fg = np.float32(255) * d["tint"][lo:hi, None, None, :] * (np.float32(SHADE) + np.float32(1 - SHADE) * g)
        else:
            a = g
            fg = np.float32(255) * d["tint"][lo:hi, None, None, :]
        v = a * fg + (np.float32(1) - a) * bg[lo:hi].astype(np.float32)
        out[lo:hi] = np.rint(v).clip(0, 255).astype(np.uint8)
    lab = labels[d["pick"]].astype(np.int64)
    masks = np.where(canvas >= MASK_THRESHOLD, (lab + 1)[:, None, None], 0).astype(np.uint8)
    boxes = np.stack([d["gx"], d["gy"], d["gx"] + d["s"], d["gy"] + d["s"]], 1).astype(np.int32)
    return out, lab, masks, boxes


def preview(images, masks, cols=8, rows=8, zoom=2, gap=2):
    """8 rows of 8 train images, each row followed by a row of their masks coloured by class."""
    n = min(len(images), cols * rows)
    h, w = images.shape[1] * zoom, images.shape[2] * zoom
    sheet = np.full((2 * rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        im = images[i].repeat(zoom, 0).repeat(zoom, 1)
        m = masks[i].repeat(zoom, 0).repeat(zoom, 1)
        col = np.where(m[..., None] > 0, PALETTE[np.maximum(m, 1) - 1], np.uint8(24))
        x = gap + c * (w + gap)
        y = gap + 2 * r * (h + gap)
        sheet[y:y + h, x:x + w] = im
        sheet[y + h + gap:y + 2 * h + gap, x:x + w] = col
    return Image.fromarray(sheet)


def generate(args, params, fm, photo_names, out):
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(photo_names))
    n_test = max(1, int(round(len(photo_names) * TEST_PHOTO_FRACTION)))
    groups = {"test": sorted(photo_names[i] for i in order[:n_test]),
              "train": sorted(photo_names[i] for i in order[n_test:])}
    say(f"{len(groups['train'])} train photos, {len(groups['test'])} test photos; loading them")
    loaded = {g: [load_photo(os.path.join(args.photos, n)) for n in names] for g, names in groups.items()}
    tr_x = read_idx(fm["train-images-idx3-ubyte"], 2051)
    tr_y = read_idx(fm["train-labels-idx1-ubyte"], 2049)
    te_x = read_idx(fm["t10k-images-idx3-ubyte"], 2051)
    te_y = read_idx(fm["t10k-labels-idx1-ubyte"], 2049)
    if len(tr_x) < 60000 or len(te_x) < 10000 or len(tr_y) != len(tr_x) or len(te_y) != len(te_x):
        die(f"Fashion-MNIST has {len(tr_x)} train and {len(te_x)} test images, wanted 60000 and 10000")
    plan = {
        "train": (args.n_train, 0, 50000, tr_x, tr_y, "train"),
        "heldout": (args.n_heldout, 50000, 60000, tr_x, tr_y, "train"),
        "test": (args.n_test, 0, 10000, te_x, te_y, "test"),
    }
    draws = {s: draw_split(rng, plan[s][0], plan[s][1], plan[s][2], loaded[plan[s][5]], args.size,
                           args.scale_min, args.scale_max) for s in SPLITS}
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        files, counts, class_counts, src_index = {}, {}, {}, {}
        first = None
        for s in SPLITS:
            n, lo, hi, x, y, group = plan[s]
            imgs, lab, masks, boxes = render_split(draws[s], x, y, loaded[group], args.size, s, args.blend)
            for suffix, arr in (("", imgs), (".labels", lab), (".masks", masks), (".boxes", boxes)):
                np.save(os.path.join(tmp, f"{s}{suffix}.npy"), np.ascontiguousarray(arr))
            counts[s] = int(n)
            class_counts[s] = np.bincount(lab, minlength=10).tolist()
            src_index[s] = {"source": "train" if group == "train" else "t10k", "range": [lo, hi]}
            if s == "train":
                first = (imgs[:64], masks[:64])
            say(f"{s}: {n} images ({time.time() - t0:.1f}s)")
        preview(*first).save(os.path.join(tmp, "preview.png"), optimize=False)
        for name in sorted(os.listdir(tmp)):
            files[name] = sha256_file(os.path.join(tmp, name))
        meta = {
            "generator": GENERATOR,
            "version": VERSION,
            "parameters": params,
            "key": params_key(params),
            "seed": args.seed,
            "classes": CLASSES,
            "inputs": {
                "fashion_mnist": {"debian_package": "dataset-fashion-mnist", "licence": "MIT (Expat), Zalando SE 2017",
                                  "files": {n: os.path.basename(p) for n, p in sorted(fm.items())}},
                "photos": {"debian_package": "mate-backgrounds", "licence": "GPL-2+ (see /usr/share/doc/mate-backgrounds/copyright)",
                           "files": photo_names},
            },
            "photos": {"train": groups["train"], "heldout": groups["train"], "test": groups["test"]},
            "garments": src_index,
            "counts": counts,
            "class_counts": class_counts,
            "layout": {"S.npy": "uint8 [N,H,W,3]", "S.labels.npy": "int64 [N]",
                       "S.masks.npy": "uint8 [N,H,W], 0 background, 1+class on garment pixels",
                       "S.boxes.npy": "int32 [N,4] x0,y0,x1,y1 exclusive"},
            "sha256": files,
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(tmp, "complete"), "w") as f:
            json.dump(params, f, sort_keys=True)
            f.write("\n")
        install(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"generated {out} in {time.time() - t0:.1f}s")
    return groups


def install(tmp, out, params):
    """Renames TMP to OUT. A stale folder of ours at OUT is moved aside first. A racing run that finished
    the same parameters first wins, and TMP is dropped."""
    old = None
    if os.path.exists(out):
        if read_stamp(out) == params:
            shutil.rmtree(tmp)
            return
        old = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if read_stamp(out) == params:
            shutil.rmtree(tmp)
        else:
            raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


# --- baselines --------------------------------------------------------------------------------------------------
def baselines(folder, threads=0, k=20, temperature=0.07, iters=100, wd=1e-4):
    import torch

    torch.manual_seed(0)
    if threads > 0:
        torch.set_num_threads(threads)

    def load(s):
        x = np.load(os.path.join(folder, f"{s}.npy"))
        y = np.load(os.path.join(folder, f"{s}.labels.npy"))
        return torch.from_numpy(x.reshape(len(x), -1)).float().div_(255), torch.from_numpy(y).long()

    t0 = time.time()
    xtr, ytr = load("train")
    queries = {s: load(s) for s in ("test", "heldout")}
    ncls = int(ytr.max()) + 1
    k = min(k, len(xtr))
    res, extra = {}, {}

    # weighted kNN: centred (train mean), L2-normalised pixels, cosine similarity, votes exp(sim / T)
    mean = xtr.mean(0, keepdim=True)
    mem = torch.nn.functional.normalize(xtr - mean, dim=1)
    for s, (xq, yq) in queries.items():
        correct = 0
        for lo in range(0, len(xq), 1024):
            q = torch.nn.functional.normalize(xq[lo:lo + 1024] - mean, dim=1)
            sim, idx = (q @ mem.T).topk(k, dim=1)
            votes = torch.zeros(len(q), ncls).scatter_add_(1, ytr[idx], (sim / temperature).exp())
            correct += int((votes.argmax(1) == yq[lo:lo + 1024]).sum())
        res[f"raw_knn_{s}"] = round(100.0 * correct / len(xq), 2)
    del mem
    say(f"kNN done ({time.time() - t0:.1f}s)")

    # logistic regression: standardised pixels (train mean and std), full-batch LBFGS, L2 penalty wd/2 |W|^2
    std = xtr.std(0, keepdim=True).clamp_min(1e-3)
    ztr = (xtr - mean) / std
    lin = torch.nn.Linear(ztr.shape[1], ncls)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(ztr), ytr) + 0.5 * wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        extra["raw_logistic_train"] = round(100.0 * float((lin(ztr).argmax(1) == ytr).float().mean()), 2)
        for s, (xq, yq) in queries.items():
            acc = float((lin((xq - mean) / std).argmax(1) == yq).float().mean())
            res[f"raw_logistic_{s}"] = round(100.0 * acc, 2)
    say(f"logistic regression done ({time.time() - t0:.1f}s); train accuracy {extra['raw_logistic_train']} %")
    return {key: res[key] for key in ("raw_knn_test", "raw_logistic_test", "raw_knn_heldout", "raw_logistic_heldout")}


# --- main -------------------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description="Generate (or reuse) the where-to-learn scenes benchmark; prints "
                                            "its folder on stdout.")
    p.add_argument("--out", help="output folder (default: $LEWEL_CACHE/scenes-<hash of the parameters>)")
    p.add_argument("--fmnist", default=FMNIST_DEFAULT, help="Fashion-MNIST IDX folder (.gz or raw)")
    p.add_argument("--photos", default=PHOTOS_DEFAULT, help="folder of natural photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48, help="image side H = W in px")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-heldout", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--scale-min", type=float, default=0.45, help="garment side / image side, lower bound")
    p.add_argument("--scale-max", type=float, default=0.75, help="garment side / image side, upper bound")
    p.add_argument("--blend", choices=BLENDS, default="opaque",
                   help="opaque (default, version 3): the garment covers the background and keeps its shading; "
                        "intensity: version 2's blend, alpha = the garment's intensity, flat tint")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for --baselines (default 0: torch's own choice; 1 is faster on a busy machine)")
    p.add_argument("--force", action="store_true", help="regenerate even when a matching folder exists")
    p.add_argument("--baselines", nargs="?", const="", metavar="DIR",
                   help="print raw-pixel kNN and logistic-regression accuracies (JSON) of DIR, or of the "
                        "folder the other arguments name (generated first when missing)")
    args = p.parse_args()

    if args.baselines:  # an existing folder: nothing to generate
        if read_stamp(args.baselines) is None:
            die(f"{args.baselines} is not a complete scenes folder (no `complete` stamp)")
        print(json.dumps(baselines(args.baselines, args.threads)), flush=True)
        return

    if args.size < 8:
        die("--size must be at least 8", 2)
    if not 0 < args.scale_min <= args.scale_max <= 1:
        die("need 0 < --scale-min <= --scale-max <= 1", 2)
    for name, n, most in (("--n-train", args.n_train, 50000), ("--n-heldout", args.n_heldout, 10000),
                          ("--n-test", args.n_test, 10000)):
        if not 1 <= n <= most:
            die(f"{name} must be in 1..{most}", 2)
    fm = fmnist_paths(args.fmnist)
    photos = photo_files(args.photos)
    params = parameters(args, fm, photos)
    out = args.out or os.path.join(cache_root(), f"scenes-{params_key(params)}")
    out = os.path.abspath(out)
    if not args.force and read_stamp(out) == params:
        say(f"cached: {out}")
    else:
        if os.path.exists(out) and not is_ours(out) and (not os.path.isdir(out) or os.listdir(out)):
            die(f"{out} exists and is not a scenes folder; not replacing it")
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        generate(args, params, fm, photos, out)
    if args.baselines is not None:
        print(json.dumps(baselines(out, args.threads)), flush=True)
    else:
        print(out, flush=True)


if __name__ == "__main__":
    main()
