"""The multi-step golden values of `lib/tests/golden.rs` (`golden_multistep_*`), from this directory's PyTorch
port of the spec (`torch_lewel.py`, which reproduces reference/lewel-official.md §11.2).

Six full pre-training steps in float64 of LEWEL_B (resnet18, ImageNet stem, width 64, K 16, hidden 32, G 4,
batch 4, 64 px; §11.2's integer-hash fill), once with EMAN and once with the plain parameter EMA, as `pretrain`
runs them: the per-step warm-up then the per-epoch cosine of the lr (§5.3; 2 steps an epoch, 1 warm-up epoch of
3, so the lr is base/2, base, base, base, base/2, base/2), LARS in the official two groups (§5.1, §5.2) with a
weight decay large enough to matter (wd·||w|| is a sizable part of ||g||), and the EMA of the target after the
optimiser step with the cosine momentum over the 6 steps (§3). Step k reads its own two views (the §11.2 views,
shifted by k·2^25 in the hash).

Prints, per mode, the loss of every step (before its update) and, after the last step, for each of online_net,
target_net, predictor and predictor_obj: the L2 norm over its parameters and the sum of its BN running
statistics. Usage: python golden_multistep.py   (torch 2.11 CPU; about a minute)
"""
import math

import torch

from torch_lewel import golden_net, make_optimizer, sym

STEPS, SPE, WARMUP, EPOCHS = 6, 2, 1, 3
BASE_LR, WD, M0 = 0.4, 0.1, 0.98
B, S = 4, 64
PARTS = ("online_net.", "target_net.", "predictor.", "predictor_obj.")


def lr_at(epoch, it):
    """reference §5.3: warmup_learning_rate, then adjust_learning_rate with --cos."""
    if epoch < WARMUP:
        return BASE_LR * min(1.0, (epoch * SPE + it + 1) / (WARMUP * SPE))
    return BASE_LR * 0.5 * (1.0 + math.cos(math.pi * (epoch - WARMUP) / (EPOCHS - WARMUP)))


def momentum(cur, total):
    return 1.0 - (1.0 - M0) * (math.cos(math.pi * cur / total) + 1.0) / 2.0


def views(k):
    i = torch.arange(B * 3 * S * S, dtype=torch.int64) + k * 2 ** 25
    return sym(i + 2 ** 31).reshape(B, 3, S, S), sym(i + 2 ** 31 + 2 ** 30).reshape(B, 3, S, S)


def is_buffer(name):
    return name.endswith("running_mean") or name.endswith("running_var") or name.endswith("num_batches_tracked")


def summary(net):
    out = []
    sd = net.state_dict()
    for part in PARTS:
        sq = sum(float((t * t).sum()) for k, t in sd.items() if k.startswith(part) and not is_buffer(k))
        bn = sum(float(t.sum()) for k, t in sd.items()
                 if k.startswith(part) and is_buffer(k) and not k.endswith("num_batches_tracked"))
        out.append((part, math.sqrt(sq), bn))
    return out


def run(eman):
    torch.set_default_dtype(torch.float64)
    net = golden_net("resnet18", eman)
    opt = make_optimizer(net, BASE_LR, WD, eman=eman)
    losses = []
    for step in range(STEPS):
        epoch, it = divmod(step, SPE)
        lr = lr_at(epoch, it)
        for g in opt.param_groups:
            g["lr"] = lr
        v1, v2 = views(step)
        loss = net(v1, v2)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            adapted = [p.detach() for g in opt.param_groups if not g["lars_exclude"] for p in g["params"]]
            w = math.sqrt(sum(float((p * p).sum()) for p in adapted))
            gn = math.sqrt(sum(float((p.grad * p.grad).sum()) for g in opt.param_groups if not g["lars_exclude"]
                               for p in g["params"]))
            print(f"# step 0: ||w|| {w:.4g}, ||g|| {gn:.4g}, wd*||w|| {WD * w:.4g} (adapted group)")
        opt.step()
        net.momentum_update(momentum(step, EPOCHS * SPE), params_only=not eman)
        losses.append(loss.item())
        print(f"# {'eman' if eman else 'params'} step {step}: lr {lr!r} loss {losses[-1]!r}")
    return losses, summary(net)


if __name__ == "__main__":
    for eman in (True, False):
        losses, summ = run(eman)
        name = "EMAN" if eman else "PARAMS"
        print(f"const MULTI_{name}_LOSSES: [f64; {STEPS}] = [{', '.join(repr(x) for x in losses)}];")
        print(f"const MULTI_{name}_AFTER: [(&str, f64, f64); {len(PARTS)}] = [")
        for part, norm, bn in summ:
            print(f"    (\"{part}\", {norm!r}, {bn!r}),")
        print("];")
