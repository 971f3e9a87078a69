#!/usr/bin/env python3
"""Regenerate fixtures/export/: tiny checkpoints in the formats `export-backbone` imports.

Run from the repository root, after `cargo build -p pretrain`:

    .venv/bin/python scripts/make-export-fixtures.py

It trains a tiny LEWEL_B model for two steps with our own `pretrain` (ResNet-18, CIFAR stem, width 2,
K 8, hidden 16: a few hundred KB), then writes, from that checkpoint:

  official-tiny.pth.tar           what the official main.py's save_checkpoint writes (torch.save, zip format):
                                  {'epoch', 'arch': 'LEWELB_EMAN', 'state_dict' (DDP names: module.online_net...,
                                  module.target_net..., module.predictor...), 'best_acc1' (a numpy float64),
                                  'optimizer' (an SGD/LARS-style state with momentum buffers and lars_exclude
                                  groups), 'scaler': None}, plus 'args', an argparse.Namespace, which the official
                                  code does not save but MoCo-style checkpoints do: unknown pickle content that a
                                  reader must skip.
  extract-backbone-tiny.pth       what the official utils/extract_backbone.py makes of it: the online backbone
                                  in torchvision names (fc dropped), saved with
                                  _use_new_zipfile_serialization=False (the legacy, non-zip format).
  official-tiny.expected.safetensors
                                  the model state in our naming (no `module.`), the ground truth the tests
                                  compare imports with (read by the safetensors crate, independently of the
                                  pickle reader under test).
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain", default="target/debug/pretrain", help="the pretrain binary")
    ap.add_argument("--out", default="fixtures/export", help="the fixture folder")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        views = os.path.join(tmp, "views.npy")
        np.save(views, np.random.RandomState(8).randn(8, 2, 3, 32, 32).astype(np.float32))
        run = os.path.join(tmp, "run")
        subprocess.run(
            [args.pretrain, "--views", views, "--preset", "small-lewelb", "--width", "2", "--proj-dim", "8",
             "--hidden-dim", "16", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--quiet",
             "--out", run],
            check=True, stdout=subprocess.DEVNULL)
        latest = open(os.path.join(run, "ckpt", "latest")).read().strip()
        ours = load_file(os.path.join(run, "ckpt", latest))

    model = collections.OrderedDict((k, v) for k, v in ours.items() if not k.startswith("optimizer."))
    save_file(dict(model), os.path.join(args.out, "official-tiny.expected.safetensors"))

    # DDP state_dict: every key under `module.`, in the model's order (safetensors sorts by name; the order
    # does not matter to the reader).
    state_dict = collections.OrderedDict(("module." + k, v.clone()) for k, v in model.items())

    # An optimiser state as main.py saves it: torch.optim state_dict layout, momentum buffers for the trainable
    # parameters, two groups (BN/bias excluded from LARS and weight decay, §5.2).
    trainable = [k for k in model if not k.startswith("target_net.") and "running_" not in k
                 and "num_batches_tracked" not in k]
    excluded = [i for i, k in enumerate(trainable) if "bn" in k or "downsample.1" in k or "bias" in k]
    regular = [i for i in range(len(trainable)) if i not in excluded]
    gen = torch.Generator().manual_seed(8)
    optimizer = {
        "state": {i: {"momentum_buffer": torch.randn(model[k].shape, generator=gen)} for i, k in enumerate(trainable)},
        "param_groups": [
            {"lr": 0.3, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0, "nesterov": False, "eta": 0.001,
             "lars_exclude": True, "params": excluded},
            {"lr": 0.3, "momentum": 0.9, "dampening": 0, "weight_decay": 1.5e-6, "nesterov": False, "eta": 0.001,
             "lars_exclude": False, "params": regular},
        ],
    }
    checkpoint = {
        "epoch": 1,
        "arch": "LEWELB_EMAN",
        "state_dict": state_dict,
        "best_acc1": np.float64(12.5),
        "optimizer": optimizer,
        "scaler": None,
        "args": argparse.Namespace(arch="LEWELB_EMAN", lr=0.3, batch_size=4),
    }
    torch.save(checkpoint, os.path.join(args.out, "official-tiny.pth.tar"))

    # utils/extract_backbone.py, verbatim in effect: online backbone keys without 'fc', prefixes removed.
    extracted = collections.OrderedDict()
    for k, v in state_dict.items():
        if (k.startswith("module.encoder_q.backbone") or k.startswith("module.online_net.backbone")) and "fc" not in k:
            name = k.replace("backbone.", "").replace("module.encoder_q.", "").replace("module.online_net.", "")
            extracted[name] = v
    torch.save(extracted, os.path.join(args.out, "extract-backbone-tiny.pth"), _use_new_zipfile_serialization=False)

    for name in sorted(os.listdir(args.out)):
        print(f"{name}: {os.path.getsize(os.path.join(args.out, name))} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
