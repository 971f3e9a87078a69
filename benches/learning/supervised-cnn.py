#!/usr/bin/env python3
"""supervised-cnn: how learnable a scenes folder is with all its labels, as a quick upper bound.

    supervised-cnn.py SCENES_DIR [EPOCHS=3] [THREADS=2]

Trains a plain 7-layer CNN (3x3 conv + BN + ReLU, widths 32-256, three stride-2 layers, global average pool,
linear) on SCENES_DIR/train.npy with its labels: Adam, one-cycle lr peaking at 2e-3, batch 128, horizontal
flips, per-channel standardisation from the train split, torch seed 0. After each epoch it prints (stderr) and,
at the end, one JSON line (stdout) with the top-1 % on the heldout and test splits. Used to choose the scenes
generator's blend (benches/learning/make-scenes.py); the benchmark's own upper bound is the `supervised` row of
scripts/learn-fmnist.sh (our ResNet, fine-tuned with finetune-semi).
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load(d, s):
    x = torch.from_numpy(np.load(f"{d}/{s}.npy")).permute(0, 3, 1, 2).float().div(255)
    return x, torch.from_numpy(np.load(f"{d}/{s}.labels.npy")).long()


def block(i, o, stride):
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    d = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    torch.manual_seed(0)
    xtr, ytr = load(d, "train")
    mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    w, batch = 32, 128
    net = nn.Sequential(block(3, w, 1), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                        block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1), block(4 * w, 8 * w, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    per_epoch = len(xtr) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * per_epoch)
    queries = {s: load(d, s) for s in ("heldout", "test")}
    t, res = time.time(), {}
    for e in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr))
        for i in range(per_epoch):
            b = perm[i * batch:(i + 1) * batch]
            x = (xtr[b] - mean) / std
            flip = torch.rand(len(b)) < 0.5
            x[flip] = x[flip].flip(3)
            loss = F.cross_entropy(net(x), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            for s, (xq, yq) in queries.items():
                pred = torch.cat([net((xq[j:j + 500] - mean) / std).argmax(1) for j in range(0, len(xq), 500)])
                res[s] = round(100 * float((pred == yq).float().mean()), 2)
        print(f"supervised-cnn: epoch {e + 1}/{epochs} loss {loss.item():.3f} heldout {res['heldout']} % "
              f"test {res['test']} % ({time.time() - t:.0f}s)", file=sys.stderr, flush=True)
    print(json.dumps({"epochs": epochs, "heldout_top1_pct": res["heldout"], "test_top1_pct": res["test"]}))


if __name__ == "__main__":
    main()
