#!/usr/bin/env python3
"""Summary of scripts/learn-fmnist.sh: WORK OUT EPOCHS [DATA] -> OUT/summary.json and OUT/summary.md.

Reads each task folder of WORK (<method>-s<seed>, random-s<seed>, supervised-s<seed>, raw-pixels): the
probes' results (eval/knn.json, eval/linear.json), the pre-training events (pretrain.jsonl) and the
fine-tuning result (run/result.json). Every figure is the FINAL one (the last epoch), never a best-epoch.
"""
import json
import os
import statistics
import sys

ORDER = ["random", "raw-pixels", "lewel-b", "byol", "lewel-m", "mocov2", "supervised"]
LABEL = {
    "random": "random init (no training)",
    "raw-pixels": "raw pixels",
    "lewel-b": "LEWEL_B",
    "byol": "BYOL",
    "lewel-m": "LEWEL_M",
    "mocov2": "MoCo v2",
    "supervised": "supervised, all labels (upper bound)",
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def task(work, name):
    d = os.path.join(work, name)
    knn, lin = load(os.path.join(d, "eval/knn.json")), load(os.path.join(d, "eval/linear.json"))
    rec = {"task": name, "done": bool(knn and lin)}
    if knn:
        rec["knn_top1_pct"] = knn["best"]["top1_pct"]
        rec["knn_k"], rec["knn_t"] = knn["best"]["k"], knn["best"]["temperature"]
        rec["dim"] = knn.get("dim")
    if lin:
        rec["linear_top1_pct"] = lin["final_top1_pct"]
        rec["linear_epochs"] = len(lin.get("epochs", [])) or None
    ev = events(os.path.join(d, "pretrain.jsonl"))
    starts = [e for e in ev if e.get("event") == "start"]
    ends = [e for e in ev if e.get("event") == "end"]
    epochs = [e for e in ev if e.get("event") == "epoch"]
    steps = [e for e in ev if e.get("event") == "step"]
    if starts:
        rec["device"] = starts[0].get("device")
        rec["git_revision"] = starts[0].get("git_revision")
        rec["total_steps"] = starts[0].get("total_steps")
    if ends:
        rec["pretrain_status"] = ends[-1].get("status")
        rec["pretrain_steps"] = ends[-1].get("step")
        rec["pretrain_s"] = round(sum(e.get("elapsed_s", 0) for e in ends), 1)
    if epochs:
        rec["epoch_loss_mean"] = [round(e["loss_mean"], 5) for e in epochs]
        rec["images_per_s"] = round(statistics.median(e["images_per_s"] for e in epochs), 1)
    if steps and "collapse_std" in steps[-1]:
        rec["final_collapse_std"] = steps[-1]["collapse_std"]
    ft = load(os.path.join(d, "run/result.json"))
    if ft and "final_top1_pct" in ft:
        rec["classifier_top1_pct"] = ft["final_top1_pct"]
    try:
        with open(os.path.join(d, "task_s")) as f:
            rec["task_s"] = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return rec


def group(name):
    return name if name == "raw-pixels" else name.rsplit("-s", 1)[0]


def fmt(vals):
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    spread = max(vals) - min(vals)
    return f"{statistics.mean(vals):.2f} ± {spread / 2:.2f} ({', '.join(f'{v:.2f}' for v in vals)})"


def main():
    work, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = sys.argv[4] if len(sys.argv) > 4 else "Fashion-MNIST, 60,000 training images, 10,000 test images"
    names = sorted(n for n in os.listdir(work) if os.path.isdir(os.path.join(work, n)))
    recs = [task(work, n) for n in names]
    rows = []
    for g in ORDER + sorted({group(r["task"]) for r in recs} - set(ORDER)):
        rs = [r for r in recs if group(r["task"]) == g and r["done"]]
        if not rs:
            continue
        seeds = [r["task"].rsplit("-s", 1)[1] for r in rs if g != "raw-pixels"]
        rows.append(
            {
                "method": g,
                "seeds": seeds,
                "knn_top1_pct": [r["knn_top1_pct"] for r in rs],
                "linear_top1_pct": [r["linear_top1_pct"] for r in rs],
                "classifier_top1_pct": [r["classifier_top1_pct"] for r in rs if "classifier_top1_pct" in r],
                "final_loss": [r["epoch_loss_mean"][-1] for r in rs if r.get("epoch_loss_mean")],
                "final_collapse_std": [r["final_collapse_std"] for r in rs if "final_collapse_std" in r],
                "pretrain_s": [r["pretrain_s"] for r in rs if "pretrain_s" in r],
            }
        )
    summary = {"data": data, "epochs": epochs, "tasks": recs, "rows": rows}
    tmp = os.path.join(out, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out, "summary.json"))

    dev = sorted({str(r.get("device")) for r in recs if r.get("device")})
    lines = [
        f"{data} (labels unused by the self-supervised rows); "
        f"{epochs} epochs for every trained row; device {', '.join(dev) or '?'}.",
        "kNN: k 20, T 0.07, cosine, on the frozen backbone's pooled features. Linear: the LEWEL_B protocol "
        "(SGD lr 0.4, batch 256, 50 epochs, x0.1 at 30 and 40) on standardised features, FINAL epoch. "
        "Mean ± half the range over seeds, per-seed values in brackets.",
        "",
        "| method | seeds | kNN top-1 % | linear top-1 % | final loss | collapse std | pre-training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = ""
        if r["classifier_top1_pct"]:
            extra = f" (its own classifier: {fmt(r['classifier_top1_pct'])})"
        lines.append(
            f"| {LABEL.get(r['method'], r['method'])}{extra} | {','.join(r['seeds']) or '—'} | "
            f"{fmt(r['knn_top1_pct'])} | {fmt(r['linear_top1_pct'])} | "
            f"{', '.join(f'{v:.4f}' for v in r['final_loss']) or '—'} | "
            f"{', '.join(f'{v:.3f}' for v in r['final_collapse_std']) or '—'} | "
            f"{', '.join(f'{v:.0f}' for v in r['pretrain_s']) or '—'} |"
        )
    missing = [r["task"] for r in recs if not r["done"]]
    if missing:
        lines += ["", "Not finished: " + ", ".join(missing)]
    tmp = os.path.join(out, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(out, "summary.md"))


if __name__ == "__main__":
    main()
