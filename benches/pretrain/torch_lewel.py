"""LEWEL_B / BYOL written in plain PyTorch eager from the spec (reference/lewel-official.md §1-§5),
as the peer of `pretrain` in `make bench`: same model, same batch, same step (forward of both views
through online and target, symmetric loss, backward, LARS step, EMA update).

Usage:
  python torch_lewel.py --golden                   # checks this model against the §11.2 golden values
  python torch_lewel.py --views V.npy --steps 20 [--method lewel-b|byol] [model flags]
                                                   # prints one JSON line with the median step time
  python torch_lewel.py --views V.npy --device cuda --precision bf16 --channels-last ...
                                                   # the GPU peer of scripts/device-check.sh

On a GPU each timed step copies the batch from host memory (as `pretrain` does), runs the forward under
torch.autocast (bf16, or fp16 with a GradScaler), and is bracketed by torch.cuda.synchronize(). LARS reads
all its norms in one transfer, as `pretrain` does (the official code calls `.item()` per parameter);
`--foreach` does LARS and the EMA with torch._foreach_* kernels (what torch.optim does on CUDA), and
`--cudnn-benchmark` sets torch.backends.cudnn.benchmark (the official main.py does): together, a tuned peer.
Needs only torch (no numpy).
"""
import argparse, ast, json, math, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class Block(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, out, 1), nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(conv(cin, out, 1, stride), nn.BatchNorm2d(out))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    def __init__(self, arch, width=64, stem="imagenet"):
        super().__init__()
        block, layers = {"resnet18": (Block, [2, 2, 2, 2]), "resnet34": (Block, [3, 4, 6, 3]),
                         "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
        if stem == "cifar":
            self.conv1 = conv(3, width, 3)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class MLP1D(nn.Module):
    def __init__(self, cin, hid, cout):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv1d(cin, hid, 1, bias=False), nn.BatchNorm1d(hid), nn.ReLU(inplace=True),
                                 nn.Conv1d(hid, cout, 1, bias=False))
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.mlp(x)


class Neck(nn.Module):
    def __init__(self, c, hid, k, groups, scale, aligned):
        super().__init__()
        self.k, self.g, self.scale, self.aligned = k, groups, scale, aligned
        self.proj = MLP1D(c, hid, k)
        if aligned:
            self.proj_obj = MLP1D(c, hid, k)

    def forward(self, f):
        b, c, h, w = f.shape
        x = f.flatten(2)                                   # [b, c, p]
        xbar = x.mean(2, keepdim=True)                     # [b, c, 1]
        if not self.aligned:
            return self.proj(xbar), None
        z = self.proj(torch.cat([xbar, x], 2))             # [b, k, 1+p]
        zg, s = z[:, :, :1], z[:, :, 1:]
        a = torch.softmax(F.normalize(s, dim=1) / self.scale, dim=2)
        a = a.view(b, self.g, self.k // self.g, h * w)     # [b, g, k/g, p]
        xg = x.view(b, self.g, c // self.g, h * w)         # [b, g, c/g, p]
        r = (xg @ a.transpose(3, 2)).reshape(b, c, self.k // self.g)
        return zg, self.proj_obj(r)


class Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.backbone = ResNet(a.arch, a.width, a.stem)
        self.neck = Neck(self.backbone.out_channels, a.hidden_dim, a.proj_dim, a.groups, a.map_scale,
                         a.method == "lewel-b")

    def forward(self, x):
        return self.neck(self.backbone(x))


def nmse(p, t):
    return 2 - 2 * (F.normalize(p, dim=1) * F.normalize(t, dim=1)).sum() / p.shape[0]


class Lewel(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.online_net, self.target_net = Encoder(a), Encoder(a)
        for po, pt in zip(self.online_net.parameters(), self.target_net.parameters()):
            pt.data.copy_(po.data)
            pt.requires_grad = False
        self.predictor = MLP1D(a.proj_dim, a.hidden_dim, a.proj_dim)
        if a.method == "lewel-b":
            self.predictor_obj = MLP1D(a.proj_dim, a.hidden_dim, a.proj_dim)

    def loss_dir(self, on, tg):
        (zo, yo), (zt, yt) = on, tg
        lg = nmse(self.predictor(zo).squeeze(-1), zt.squeeze(-1))
        if yo is None:
            return lg
        b, c, n = yo.shape
        la = nmse(self.predictor_obj(yo).transpose(2, 1).reshape(b * n, c), yt.transpose(2, 1).reshape(b * n, c))
        return self.a.alpha * lg + (1 - self.a.alpha) * la

    def forward(self, v1, v2):
        o1, o2 = self.online_net(v1), self.online_net(v2)
        with torch.no_grad():
            t1, t2 = self.target_net(v1), self.target_net(v2)
            t1 = tuple(None if t is None else t.detach() for t in t1)
            t2 = tuple(None if t is None else t.detach() for t in t2)
        return self.loss_dir(o1, t2) + self.loss_dir(o2, t1)

    @torch.no_grad()
    def momentum_update(self, m, foreach=False, params_only=False):
        """EMAN: the whole state (parameters and BN statistics) averaged, num_batches_tracked copied.
        `params_only`: the official LEWELB update instead, `param_t = param_t * m + param_o * (1 - m)` over the
        parameters alone (the target's BN buffers follow its own train-mode forwards)."""
        if params_only:
            for po, pt in zip(self.online_net.parameters(), self.target_net.parameters()):
                pt.copy_(pt * m + po * (1.0 - m))
            return
        if not hasattr(self, "_ema_pairs"):
            so, st = self.online_net.state_dict(), self.target_net.state_dict()
            fl = [(st[k], so[k]) for k in st if not k.endswith("num_batches_tracked")]
            it = [(st[k], so[k]) for k in st if k.endswith("num_batches_tracked")]
            self._ema_pairs = ([t for t, _ in fl], [o for _, o in fl], [t for t, _ in it], [o for _, o in it])
        ft, fo, it, io = self._ema_pairs
        if foreach:
            torch._foreach_mul_(ft, m)
            torch._foreach_add_(ft, fo, alpha=1 - m)
            torch._foreach_copy_(it, io)
            return
        for vt, vo in zip(it, io):
            vt.copy_(vo)
        for vt, vo in zip(ft, fo):
            vt.mul_(m).add_(vo, alpha=1 - m)


class Lars(torch.optim.Optimizer):
    """§5.1: trust ratio with wd in the denominator, lr inside the momentum buffer."""

    def __init__(self, groups, lr, momentum=0.9, weight_decay=0.0, eta=1e-3, foreach=False):
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))
        self.foreach = foreach

    def _factors(self):
        """Per group, the parameters with a gradient and their LARS factors (python floats, as `.item()`
        gives), with every norm read in one device-to-host transfer."""
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        adapted = [p for g, ps in groups if not g["lars_exclude"] for p in ps]
        host = []
        if adapted:
            if self.foreach:
                norms = torch._foreach_norm(adapted) + torch._foreach_norm([p.grad for p in adapted])
            else:
                norms = [p.norm() for p in adapted] + [p.grad.norm() for p in adapted]
            host = torch.stack(norms).double().cpu().tolist()
        n, i, out = len(adapted), 0, []
        for g, ps in groups:
            fs = []
            for _ in ps:
                if g["lars_exclude"]:
                    fs.append(1.0)
                    continue
                wn, gn = host[i], host[n + i]
                i += 1
                den = gn + g["weight_decay"] * wn
                fs.append(g["eta"] * wn / den if den > 0 else 0.0)
            out.append((g, ps, fs))
        return out

    @torch.no_grad()
    def step(self):
        for g, ps, fs in self._factors():
            if not ps:
                continue
            wd, lr = g["weight_decay"], g["lr"]
            if self.foreach:
                d = torch._foreach_add([p.grad for p in ps], ps, alpha=wd)
                torch._foreach_mul_(d, [f * lr for f in fs])
                if all("buf" in self.state[p] for p in ps):
                    bufs = [self.state[p]["buf"] for p in ps]
                    torch._foreach_mul_(bufs, g["momentum"])
                    torch._foreach_add_(bufs, d)
                else:
                    bufs = d
                    for p, b in zip(ps, d):
                        self.state[p]["buf"] = b
                torch._foreach_sub_(ps, bufs)
                continue
            for p, local in zip(ps, fs):
                d = (p.grad + wd * p) * (local * lr)
                st = self.state[p]
                if "buf" not in st:
                    st["buf"] = d.clone()
                else:
                    st["buf"].mul_(g["momentum"]).add_(d)
                p.sub_(st["buf"])


def make_optimizer(net, lr, wd, eman=True, foreach=False):
    excl, rest = [], []
    for n, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (excl if ("bn" in n or "downsample.1" in n or "bias" in n or (eman and "mlp.1" in n)) else rest).append(p)
    return Lars([{"params": excl, "weight_decay": 0.0, "lars_exclude": True}, {"params": rest}], lr=lr,
                weight_decay=wd, foreach=foreach)


def args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--golden", action="store_true")
    p.add_argument("--views")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--method", default="lewel-b")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--map-scale", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fp32, or the forward under torch.autocast in bf16 / fp16 (fp16 with a GradScaler)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels-last memory format")
    p.add_argument("--foreach", action="store_true", help="LARS and EMA with torch._foreach_* kernels")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    return p


def load_views(path, n):
    """The first n view pairs of a float32 [N,2,3,H,W] .npy file (C order), read without numpy."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise SystemExit(f"{path}: not a .npy file")
        major = f.read(2)[0]
        hlen = int.from_bytes(f.read(2 if major == 1 else 4), "little")
        h = ast.literal_eval(f.read(hlen).decode("latin1"))
        shape = tuple(h["shape"])
        if h["descr"] != "<f4" or h["fortran_order"] or len(shape) != 5 or shape[1] != 2:
            raise SystemExit(f"{path}: want little-endian float32 [N,2,3,H,W] in C order, got {h}")
        if shape[0] < n:
            raise SystemExit(f"{path}: {shape[0]} view pairs, fewer than --batch-size {n}")
        count = n * math.prod(shape[1:])
        data = bytearray(f.read(count * 4))
    return torch.frombuffer(data, dtype=torch.float32).reshape((n,) + shape[1:])


def bench(a):
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    views = load_views(a.views, a.batch_size)
    h1, h2 = views[:, 0].contiguous(), views[:, 1].contiguous()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    net = Lewel(a).to(dev, memory_format=fmt)
    net.train()
    net.target_net.eval()
    opt = make_optimizer(net, 0.1, 1e-5, foreach=a.foreach)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(dev.type) if a.precision == "fp16" else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times, all_times = [], []
    for i in range(a.steps + a.warmup_steps):
        sync()
        t = time.perf_counter()
        # The batch comes from host memory every step, as in `pretrain` (pageable, blocking copy).
        v1, v2 = h1.to(dev, memory_format=fmt), h2.to(dev, memory_format=fmt)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = net(v1, v2)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        net.momentum_update(0.99, foreach=a.foreach)
        sync()
        all_times.append(round(time.perf_counter() - t, 4))
        if i >= a.warmup_steps:
            times.append(all_times[-1])
    times.sort()
    med = times[len(times) // 2]
    out = {"peer": "pytorch-eager", "method": a.method, "arch": a.arch, "batch": a.batch_size,
           "size_px": v1.shape[-1], "device": str(dev), "precision": a.precision,
           "channels_last": a.channels_last, "foreach": a.foreach, "cudnn_benchmark": a.cudnn_benchmark,
           "torch": torch.__version__, "step_s_median": med, "images_per_s": round(a.batch_size / med, 1),
           "steps": len(times), "warmup_steps": a.warmup_steps, "loss": loss.item(), "step_s_all": all_times}
    if cuda:
        mib = 2 ** 20
        out.update(device_name=torch.cuda.get_device_name(dev),
                   peak_allocated_mib=round(torch.cuda.max_memory_allocated(dev) / mib),
                   peak_reserved_mib=round(torch.cuda.max_memory_reserved(dev) / mib))
    print(json.dumps(out))


# ---- §11.2 golden values: the integer-hash fill ------------------------------------------------
M32 = 0xFFFFFFFF


def uhash(n):
    x = n & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    x = (x >> 16) ^ x
    return x.to(torch.float64) / 2.0 ** 32


def sym(n):
    return 2.0 * uhash(n) - 1.0


@torch.no_grad()
def fill(model):
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        i = torch.arange(t.numel(), dtype=torch.int64)
        if t.dim() >= 2:
            v = sym(i) * math.sqrt(3.0 / (t.numel() // t.shape[0]))
        elif name.endswith("running_mean"):
            v = 0.1 * sym(i + 2 ** 30)
        elif name.endswith("running_var"):
            v = 1.0 + 0.25 * sym(i + 2 ** 30 + 2 ** 29)
        elif name.endswith("weight"):
            v = 1.0 + 0.1 * sym(i + 2 ** 28)
        else:
            v = 0.1 * sym(i + 2 ** 29)
        t.copy_(v.reshape(t.shape).to(t.dtype))


def golden_net(arch, eman):
    """§11.2's LEWEL_B (ImageNet stem, width 64, K 16, hidden 32) filled by the hash, in training mode; with
    `eman` the target's BN in eval mode (LEWELB_EMAN), else in train mode (LEWELB)."""
    a = args_parser().parse_args(["--arch", arch, "--stem", "imagenet", "--width", "64", "--proj-dim", "16",
                                  "--hidden-dim", "32"])
    net = Lewel(a)
    fill(net)
    net.train()
    if eman:
        net.target_net.eval()
    return net


def golden():
    torch.set_default_dtype(torch.float64)
    ok = True
    for arch, eman, want in [("resnet18", True, 3.320804383186), ("resnet18", False, 2.412717245168)]:
        net = golden_net(arch, eman)
        n = 4 * 3 * 64 * 64
        i = torch.arange(n, dtype=torch.int64)
        v1, v2 = sym(i + 2 ** 31).reshape(4, 3, 64, 64), sym(i + 2 ** 31 + 2 ** 30).reshape(4, 3, 64, 64)
        got = net(v1, v2).item()
        print(f"{arch} eman={eman}: {got:.12f} (golden {want:.12f}, diff {abs(got - want):.1e})")
        ok &= abs(got - want) < 1e-9
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    a = args_parser().parse_args()
    golden() if a.golden else bench(a)
