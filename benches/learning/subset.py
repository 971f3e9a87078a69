#!/usr/bin/env python3
"""subset: rows LO..HI (exclusive) of an image data set, with their labels, as a new file of the same kind.

    subset.py SRC LO HI DST

SRC is an IDX image file (NAME-images-idx3-ubyte[.gz]; its labels are the NAME-labels-idx1-ubyte[.gz] beside it)
or a uint8 .npy array (its labels are SRC's .labels.npy beside it; .masks.npy and .boxes.npy follow when present).
DST is written uncompressed, beside its labels (DST with images-idx3 -> labels-idx1, or DST's .labels.npy), each
through a temporary file renamed into place, so an interrupted run leaves no partial DST. Used by
scripts/learn-fmnist.sh (TRAIN_N) and benches/learning/sweep.sh (the training and held-out parts).
"""
import gzip
import os
import sys

import numpy as np


def fail(msg):
    print(f"subset: error: {msg}", file=sys.stderr)
    sys.exit(1)


def put(path, data):
    tmp = f"{path}.part-{os.getpid()}"
    if isinstance(data, bytes):
        with open(tmp, "wb") as f:
            f.write(data)
    else:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(data))
    os.replace(tmp, path)


def npy(src, lo, hi, dst):
    x = np.load(src, mmap_mode="r")
    if hi > len(x):
        fail(f"{src} has {len(x)} rows, fewer than the {hi} asked for")
    base, out = src[:-4], dst[:-4]
    for side in (".labels", ".masks", ".boxes"):  # the labels first: DST appears last, when all is written
        if os.path.exists(base + side + ".npy"):
            put(out + side + ".npy", np.load(base + side + ".npy", mmap_mode="r")[lo:hi])
        elif side == ".labels":
            fail(f"no labels beside {src} ({base}.labels.npy)")
    put(dst, x[lo:hi])


def idx(src, lo, hi, dst):
    op = gzip.open if src.endswith(".gz") else open
    lab_src = src.replace("images-idx3", "labels-idx1")
    if lab_src == src or not os.path.exists(lab_src):
        fail(f"no labels beside {src} (a NAME-labels-idx1-ubyte file)")
    with op(src, "rb") as f:
        im = f.read()
    with op(lab_src, "rb") as f:
        lb = f.read()
    n, row = int.from_bytes(im[4:8], "big"), int.from_bytes(im[8:12], "big") * int.from_bytes(im[12:16], "big")
    if hi > n:
        fail(f"{src} has {n} images, fewer than the {hi} asked for")
    m = hi - lo
    put(dst.replace("images-idx3", "labels-idx1"), lb[:4] + m.to_bytes(4, "big") + lb[8 + lo:8 + hi])
    put(dst, im[:4] + m.to_bytes(4, "big") + im[8:16] + im[16 + lo * row:16 + hi * row])


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, lo, hi, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if not 0 <= lo < hi:
        fail(f"need 0 <= LO < HI, got {lo} {hi}")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    (npy if src.endswith(".npy") else idx)(src, lo, hi, dst)


if __name__ == "__main__":
    main()
