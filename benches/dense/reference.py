"""Plain-PyTorch references of dense-probe's two protocols, for scripts/bench-dense.sh (not part of the product).

  reference.py make DIR N DIM CLASSES          synthetic feature maps [N, DIM, 8, 8] + masks [N, 64, 64] (train, val)
  reference.py knn DIR K T QUERY_CHUNK DEVICE  kNN vote over the whole bank per query chunk, mIoU; one JSON line
  reference.py linear DIR EPOCHS BATCH LR DEVICE  the linear protocol's loop, mean epoch time, mIoU; one JSON line

Same protocols as lewel::eval::dense (lib/tests/dense_torch.rs checks them equal on small data), written
independently: histograms from one-hot masks summed in blocks, one similarity matrix per query chunk against the
whole bank, F.cross_entropy with probability targets, torch.optim.SGD.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

GRID, MASK = 8, 64


def make(d, n, dim, classes):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    for split, seed in [("train", 1), ("val", 2)]:
        r = np.random.default_rng(seed)
        # masks: a background with one rectangle of a random class per image, a 255 border
        m = np.zeros((n, MASK, MASK), np.uint8)
        for i in range(n):
            y0, x0 = r.integers(0, MASK // 2, 2)
            h, w = r.integers(MASK // 4, MASK // 2, 2)
            m[i, y0:y0 + h, x0:x0 + w] = r.integers(1, classes)
        m[:, 0, :] = 255
        # features: the centre of the largest class id in each patch, plus noise
        blocks = m.reshape(n, GRID, MASK // GRID, GRID, MASK // GRID).transpose(0, 1, 3, 2, 4).reshape(n, GRID, GRID, -1)
        major = np.where(blocks == 255, 0, blocks).max(-1)
        x = centres[major] + 2.0 * r.standard_normal((n, GRID, GRID, dim)).astype(np.float32)
        np.save(f"{d}/{split}.npy", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        np.save(f"{d}/{split}.masks.npy", m)


def load(d, split):
    return torch.from_numpy(np.load(f"{d}/{split}.npy")), torch.from_numpy(np.load(f"{d}/{split}.masks.npy")).long()


def hist(m, classes, chunk=512):
    n, H, W = m.shape
    out = []
    for lo in range(0, n, chunk):
        c = m[lo:lo + chunk]
        oh = F.one_hot(torch.where(c == 255, classes, c), classes + 1)[..., :classes].float()
        out.append(oh.view(c.shape[0], GRID, H // GRID, GRID, W // GRID, classes).sum((2, 4)).reshape(-1, classes))
    return torch.cat(out)


def flat(f):
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class Conf:
    def __init__(self, classes, device):
        self.k = classes
        self.c = torch.zeros(classes * classes, dtype=torch.long, device=device)

    def add(self, scores, truth):
        b = truth.shape[0]
        g = scores.view(b, GRID, GRID, self.k).permute(0, 3, 1, 2)
        pred = F.interpolate(g, size=truth.shape[1:], mode="bilinear", align_corners=False).argmax(1)
        keep = truth != 255
        self.c += torch.bincount(truth[keep] * self.k + pred[keep], minlength=self.k * self.k)

    def miou(self):
        c = self.c.view(self.k, self.k).double().cpu()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        return (100 * (tp[union > 0] / union[union > 0]).mean()).item()


def classes_of(*masks):
    return int(max(m[m != 255].max().item() for m in masks)) + 1


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def knn(d, k, t, qc, device):
    device = torch.device(device)
    trf, trm = load(d, "train")
    vaf, vam = load(d, "val")
    K = classes_of(trm, vam)
    sync(device)
    t0 = time.time()
    bh = hist(trm, K)
    keep = bh.sum(1) > 0
    bank = F.normalize(flat(trf)[keep].to(device), dim=1)
    labels = (bh[keep] / bh[keep].sum(1, keepdim=True)).to(device)
    conf = Conf(K, device)
    per = 256  # images per scoring chunk
    for lo in range(0, vaf.shape[0], per):
        q = flat(vaf[lo:lo + per]).to(device)
        votes = []
        for s in range(0, q.shape[0], qc):
            sv, si = (F.normalize(q[s:s + qc], dim=1) @ bank.T).topk(k, dim=1)
            votes.append(((sv / t).softmax(1)[:, :, None] * labels[si]).sum(1))
        conf.add(torch.cat(votes), vam[lo:lo + per].to(device))
    m = conf.miou()
    sync(device)
    print(json.dumps({"miou_pct": m, "knn_s": time.time() - t0, "bank": int(bank.shape[0])}))


def linear(d, epochs, batch, lr, device):
    device = torch.device(device)
    trf, trm = load(d, "train")
    vaf, vam = load(d, "val")
    K = classes_of(trm, vam)
    n, C = trf.shape[:2]
    bh = hist(trm, K)
    var, mean = torch.var_mean(trf, dim=(0, 2, 3), correction=0)
    mean, std = mean.to(device), (var + 1e-5).sqrt().to(device)
    w = torch.zeros(K, C, device=device, requires_grad=True)
    b = torch.zeros(K, device=device, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=lr, momentum=0.9)
    p = GRID * GRID
    times = []
    for _ in range(epochs):
        sync(device)
        t0 = time.time()
        for lo in range(0, n, batch):
            x = (flat(trf[lo:lo + batch].to(device)) - mean) / std
            cnt = bh[lo * p:(lo + batch) * p].to(device)
            total = cnt.sum(1)
            wt = (total > 0).float()
            ce = F.cross_entropy(x @ w.T + b, cnt / total.clamp(min=1)[:, None], reduction="none")
            loss = (ce * wt).sum() / wt.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.time() - t0)
    conf = Conf(K, device)
    with torch.no_grad():
        for lo in range(0, vaf.shape[0], 256):
            conf.add((flat(vaf[lo:lo + 256].to(device)) - mean) / std @ w.T + b, vam[lo:lo + 256].to(device))
    print(json.dumps({"miou_pct": conf.miou(), "epoch_s": sum(times) / len(times)}))


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "knn":
        knn(a[0], int(a[1]), float(a[2]), int(a[3]), a[4])
    elif cmd == "linear":
        linear(a[0], int(a[1]), int(a[2]), float(a[3]), a[4])
    else:
        sys.exit(f"unknown command {cmd}")
