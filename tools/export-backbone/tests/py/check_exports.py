"""Interop check of export-backbone's outputs with the real PyTorch, torchvision, safetensors and numpy.

Usage: check_exports.py DIR ARCH. DIR holds ours.safetensors (our checkpoint), bb.safetensors, bb.pth, bb.pkl
(the three exports), x.npy (input images) and feats.npy (our features of x). Prints one JSON object.
"""
import json
import pickle
import sys
import warnings

warnings.simplefilter("error")  # e.g. a numpy.core deprecation while unpickling must fail the test

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file

d, arch = sys.argv[1], sys.argv[2]
ours = load_file(f"{d}/ours.safetensors")
P = "online_net.backbone."
ref = {k[len(P):]: v for k, v in ours.items() if k.startswith(P)}


def same(a, b):
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(a, b)


def moco_rename(k):
    # moco/detection/convert-pretrain-to-detectron2.py, after the prefix is stripped
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


out = {"reference_tensors": len(ref)}
tv_order = [k for k in getattr(torchvision.models, arch)().state_dict() if not k.startswith("fc.")]
x = torch.from_numpy(np.load(f"{d}/x.npy"))
feats = torch.from_numpy(np.load(f"{d}/feats.npy"))
for name, sd in [
    ("safetensors", load_file(f"{d}/bb.safetensors")),
    ("pth", torch.load(f"{d}/bb.pth", weights_only=True)),
]:
    r = {
        "type": type(sd).__name__,
        "keys_in_torchvision_order": list(sd) == tv_order,
        "same_key_set": set(sd) == set(ref),
        "all_equal": set(sd) == set(ref) and all(same(sd[k], ref[k]) for k in ref),
        "num_batches_tracked_dtype": str(sd["bn1.num_batches_tracked"].dtype),
    }
    model = getattr(torchvision.models, arch)()
    res = model.load_state_dict(sd, strict=False)
    r["missing"] = sorted(res.missing_keys)
    r["unexpected"] = sorted(res.unexpected_keys)
    model.fc = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        f = model(x)
    r["feature_shape"] = list(f.shape)
    r["feature_max_abs_diff"] = float((f - feats).abs().max())
    out[name] = r

# timm: its ResNets use torchvision's names; load the safetensors export into timm's model of the
# same architecture (head `fc` left out) and compare features.
import timm  # noqa: E402

tm = timm.create_model(arch, pretrained=False, num_classes=0)
res = tm.load_state_dict(load_file(f"{d}/bb.safetensors"), strict=False)
tm.eval()
with torch.no_grad():
    tf = tm(x)
out["timm"] = {
    "version": timm.__version__,
    "missing": sorted(res.missing_keys),
    "unexpected": sorted(res.unexpected_keys),
    "feature_max_abs_diff": float((tf - feats).abs().max()),
}

with open(f"{d}/bb.pkl", "rb") as fh:
    d2 = pickle.load(fh, encoding="latin1")  # as detectron2's checkpoint loader reads .pkl files
m = d2["model"]
out["detectron2"] = {
    "author": d2.get("__author__"),
    "matching_heuristics": d2.get("matching_heuristics"),
    "names_match_moco_converter": sorted(m) == sorted(moco_rename(k) for k in ref),
    "all_ndarrays": all(isinstance(v, np.ndarray) for v in m.values()),
    "all_equal": all(
        m[moco_rename(k)].dtype == v.numpy().dtype and np.array_equal(m[moco_rename(k)], v.numpy()) for k, v in ref.items()
    ),
}
print(json.dumps(out))
