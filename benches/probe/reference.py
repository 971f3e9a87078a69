"""Plain-PyTorch references of the two probes, for scripts/bench-probe.sh (not part of the product).

  reference.py make DIR N_TRAIN N_VAL DIM CLASSES   synthetic clustered features + labels (.npy)
  reference.py knn DIR K T BATCH                    weighted kNN (InstDisc/DINO protocol), one JSON line
  reference.py linear DIR EPOCHS BATCH LR           SGD-momentum linear probe, step x0.1 at 60%/80%, one JSON line

Same protocols as lewel::eval (ties of the vote go to the smallest label), written independently.
"""
import json
import sys
import time

import numpy as np
import torch


def load(d, split):
    x = torch.from_numpy(np.load(f"{d}/{split}.npy"))
    y = torch.from_numpy(np.load(f"{d}/{split}.labels.npy")).long()
    return x, y


def rank_of_true(scores, y):
    sy = scores.gather(1, y[:, None])
    cls = torch.arange(scores.shape[1])[None, :]
    return ((scores > sy) | ((scores == sy) & (cls < y[:, None]))).sum(1)


def make(d, n_train, n_val, dim, classes):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    for split, n in [("train", n_train), ("val", n_val)]:
        y = rng.integers(0, classes, n)
        x = centres[y] + 4.0 * rng.standard_normal((n, dim)).astype(np.float32)
        np.save(f"{d}/{split}.npy", np.maximum(x, 0).astype(np.float32))  # non-negative, like pooled ReLU features
        np.save(f"{d}/{split}.labels.npy", y.astype(np.int64))


def knn(d, k, t, batch):
    t0 = time.time()
    xtr, ytr = load(d, "train")
    xva, yva = load(d, "val")
    xtr = torch.nn.functional.normalize(xtr, dim=1)
    xva = torch.nn.functional.normalize(xva, dim=1)
    classes = int(max(ytr.max(), yva.max())) + 1
    c1 = c5 = 0
    for s in range(0, len(xva), batch):
        sims = xva[s:s + batch] @ xtr.T
        v, i = sims.topk(min(k, len(xtr)), dim=1)
        w = ((v - v[:, :1]).double() / t).exp()
        votes = torch.zeros(len(v), classes, dtype=torch.float64).scatter_add_(1, ytr[i], w)
        r = rank_of_true(votes, yva[s:s + batch])
        c1 += int((r < 1).sum())
        c5 += int((r < 5).sum())
    n = len(xva)
    print(json.dumps({"top1_pct": 100 * c1 / n, "top5_pct": 100 * c5 / n, "elapsed_s": time.time() - t0}))


def linear(d, epochs, batch, lr):
    t0 = time.time()
    torch.manual_seed(0)
    xtr, ytr = load(d, "train")
    xva, yva = load(d, "val")
    classes = int(max(ytr.max(), yva.max())) + 1
    fc = torch.nn.Linear(xtr.shape[1], classes)
    fc.weight.data.normal_(0, 0.01)
    fc.bias.data.zero_()
    opt = torch.optim.SGD(fc.parameters(), lr=lr, momentum=0.9, weight_decay=0)
    milestones = [int(0.6 * epochs), int(0.8 * epochs)]
    for e in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * 0.1 ** sum(e >= m for m in milestones)
        g = torch.Generator().manual_seed(e)
        order = torch.randperm(len(xtr), generator=g)
        for s in range(0, len(xtr), batch):
            idx = order[s:s + batch]
            loss = torch.nn.functional.cross_entropy(fc(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        r = rank_of_true(fc(xva), yva)
    n = len(xva)
    print(json.dumps({"top1_pct": 100 * float((r < 1).sum()) / n, "top5_pct": 100 * float((r < 5).sum()) / n,
                      "elapsed_s": time.time() - t0}))


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", torch.get_num_threads())))
    cmd, d, *rest = sys.argv[1:]
    if cmd == "make":
        make(d, *map(int, rest))
    elif cmd == "knn":
        knn(d, int(rest[0]), float(rest[1]), int(rest[2]))
    elif cmd == "linear":
        linear(d, int(rest[0]), int(rest[1]), float(rest[2]))
    else:
        sys.exit(f"unknown command {cmd}")
