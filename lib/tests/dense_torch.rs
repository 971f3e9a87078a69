//! `dense-probe`'s two protocols against a direct PyTorch computation of the same protocols on the same feature
//! maps and masks: the kNN votes (to 1e-5) and predictions (identical), and the linear probe's epoch losses and
//! mIoU (zero init, images in file order, `torch.optim.SGD` with momentum: deterministic on both sides).
//!
//! PyTorch computes the patch histograms by reshaping one-hot masks into blocks (ours: a bincount of patch
//! indices), the kNN in one similarity matrix (ours: blocks merged), the loss with `F.cross_entropy`'s
//! probability targets (ours: log-softmax products) and the mIoU from its own confusion matrix. Needs
//! `.venv/bin/python` with torch (made by `scripts/setup.sh`, which `make test` runs first).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use lewel::eval::dense::protocols::{self, DenseSplit, KnnSettings, LinearSettings};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = r#"
import json, sys, torch
import torch.nn.functional as F
torch.set_num_threads(1)
d = json.load(sys.stdin)
t = lambda key, dt: torch.tensor(d[key], dtype=dt).reshape(d[key + "_shape"])
trf, vaf = t("train_feats", torch.float32), t("val_feats", torch.float32)
trm, vam = t("train_masks", torch.int64), t("val_masks", torch.int64)
K, k, T = d["classes"], d["k"], d["temperature"]
n, C, h, w = trf.shape
H, W = trm.shape[1:]

def hist(m):
    oh = F.one_hot(torch.where(m == 255, K, m), K + 1)[..., :K].float()          # [n, H, W, K], ignored: zeros
    return oh.view(m.shape[0], h, H // h, w, W // w, K).sum((2, 4)).reshape(-1, K)  # [n*h*w, K]

def flat(f):
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])

def predict(scores, m):
    g = scores.view(m, h, w, K).permute(0, 3, 1, 2)
    return F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False).argmax(1)

def miou(pred, truth):
    keep = truth != 255
    conf = torch.bincount(truth[keep] * K + pred[keep], minlength=K * K).view(K, K).double()
    tp = conf.diag(); union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return (100 * iou.mean()).item(), (100 * tp.sum() / conf.sum()).item()

# kNN
bh = hist(trm); keep = bh.sum(1) > 0
bf = F.normalize(flat(trf)[keep], dim=1); bl = bh[keep] / bh[keep].sum(1, keepdim=True)
q = F.normalize(flat(vaf), dim=1)
sv, si = (q @ bf.T).topk(k, dim=1)
votes = ((sv / T).softmax(1)[:, :, None] * bl[si]).sum(1)
kpred = predict(votes, vaf.shape[0])

# linear
var, mean = torch.var_mean(trf, dim=(0, 2, 3), correction=0)
std = (var + 1e-5).sqrt()
Wt = torch.zeros(K, C, requires_grad=True); b = torch.zeros(K, requires_grad=True)
opt = torch.optim.SGD([Wt, b], lr=d["lr"], momentum=0.9)
B = d["batch_size"]; losses = []
for epoch in range(d["epochs"]):
    tot, steps = 0.0, 0
    for lo in range(0, n, B):
        x = (flat(trf[lo:lo + B]) - mean) / std
        cnt = bh[lo * h * w:(lo + B) * h * w]; total = cnt.sum(1)
        wt = (total > 0).float()
        ce = F.cross_entropy(x @ Wt.T + b, cnt / total.clamp(min=1)[:, None], reduction="none")
        loss = (ce * wt).sum() / wt.sum().clamp(min=1)
        opt.zero_grad(); loss.backward(); opt.step()
        tot += loss.item(); steps += 1
    losses.append(tot / steps)
with torch.no_grad():
    lpred = predict((flat(vaf) - mean) / std @ Wt.T + b, vaf.shape[0])
km, ka = miou(kpred, vam); lm, la = miou(lpred, vam)
print(json.dumps({"votes": votes.flatten().tolist(), "knn_pred": kpred.flatten().tolist(), "knn_miou": km,
                  "knn_acc": ka, "losses": losses, "linear_pred": lpred.flatten().tolist(), "linear_miou": lm,
                  "linear_acc": la}))
"#;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (make test does)", p.display());
    p
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1)).unwrap()
}

/// Masks with structure (vertical bands of 4 classes, shifted per image) and a few ignored pixels.
fn masks(n: i64, seed: i64) -> Tensor {
    let v: Vec<u8> = (0..n * 16 * 16)
        .map(|i| {
            let (img, y, x) = (i / 256, (i / 16) % 16, i % 16);
            if (x + y * 3 + img + seed) % 23 == 0 {
                255
            } else {
                (((x + img * 3 + seed) / 4 + y / 8) % 4) as u8
            }
        })
        .collect();
    Tensor::from_slice(&v).view([n, 16, 16])
}

#[test]
fn dense_protocols_match_pytorch() {
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    // features that carry the class of their patch plus noise, so that both protocols learn something
    let feats = |m: &Tensor| {
        let n = m.size()[0];
        let cls =
            m.to_kind(Kind::Int64).clamp(0, 3).view([n, 4, 4, 4, 4]).permute([0, 1, 3, 2, 4]).reshape([n, 4, 4, 16]);
        let mode = cls.mode(-1, false).0; // [n, 4, 4]
        let onehot = mode.one_hot(4).to_kind(Kind::Float).permute([0, 3, 1, 2]); // [n, 4, 4, 4]
        Tensor::cat(&[onehot * 2.0, Tensor::randn([n, 4, 4, 4], opts)], 1) + Tensor::randn([n, 8, 4, 4], opts) * 0.5
    };
    let (trm, vam) = (masks(10, 0), masks(6, 5));
    let train = DenseSplit::new(feats(&trm), trm).unwrap();
    let val = DenseSplit::new(feats(&vam), vam).unwrap();
    let classes = 4;
    let knn = KnnSettings { k: 7, temperature: 0.1, memory_size: 1 << 20, seed: 1, query_chunk: 16, bank_chunk: 50 };
    let lin = LinearSettings { epochs: 3, lr: 0.1, batch_size: 4 };

    let (kconf, votes, _) = protocols::knn_evaluate(&train, &val, classes, &knn, Device::Cpu, &mut |_, _| {}).unwrap();
    let kpred = protocols::predictions(&val, 0, val.len(), &votes);
    let mut losses = Vec::new();
    let head = protocols::linear_train(
        &train,
        classes,
        &lin,
        Device::Cpu,
        &mut |_, l, _| {
            losses.push(l);
            Ok(())
        },
        &mut |_, _| {},
    )
    .unwrap();
    let lconf = protocols::linear_evaluate(&head, &val, classes, Device::Cpu).unwrap();
    let lpred =
        protocols::predictions(&val, 0, val.len(), &protocols::head_scores(&head, &val, 0, val.len(), Device::Cpu));

    let mut input = serde_json::Map::new();
    for (key, t) in [("train_feats", &train.feats), ("val_feats", &val.feats)] {
        input.insert(key.into(), json!(floats(t)));
        input.insert(format!("{key}_shape"), json!(t.size()));
    }
    for (key, t) in [("train_masks", &train.masks), ("val_masks", &val.masks)] {
        input.insert(key.into(), json!(ints(t)));
        input.insert(format!("{key}_shape"), json!(t.size()));
    }
    for (k, v) in [("classes", json!(classes)), ("k", json!(knn.k)), ("temperature", json!(knn.temperature))] {
        input.insert(k.into(), v);
    }
    for (k, v) in [("lr", json!(lin.lr)), ("epochs", json!(lin.epochs)), ("batch_size", json!(lin.batch_size))] {
        input.insert(k.into(), v);
    }
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(Value::Object(input).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |key: &str| -> Vec<f64> { want[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let num = |key: &str| want[key].as_f64().unwrap();

    // kNN: the votes to float tolerance, the same predictions, the same scores
    let ours = floats(&votes);
    let theirs = list("votes");
    assert_eq!(ours.len(), theirs.len());
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-5, "kNN votes differ by {worst}");
    let kp: Vec<f64> = ints(&kpred).into_iter().map(|v| v as f64).collect();
    assert_eq!(kp, list("knn_pred"), "kNN predictions differ");
    let ks = kconf.scores();
    assert!((ks.miou_pct - num("knn_miou")).abs() < 1e-9, "{} vs {}", ks.miou_pct, num("knn_miou"));
    assert!((ks.pixel_acc_pct - num("knn_acc")).abs() < 1e-9);
    assert!(ks.miou_pct > 40.0, "the kNN learned the bands: {}", ks.miou_pct);

    // linear: the epoch losses, the predictions and the mIoU
    let tl = list("losses");
    for (a, b) in losses.iter().zip(&tl) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "epoch losses {losses:?} vs {tl:?}");
    }
    let ls = lconf.scores();
    eprintln!(
        "kNN votes max diff {worst:e}; kNN mIoU {} (PyTorch {}); linear mIoU {} (PyTorch {}); losses {losses:?} vs {tl:?}",
        ks.miou_pct,
        num("knn_miou"),
        ls.miou_pct,
        num("linear_miou")
    );
    assert!(
        (ls.miou_pct - num("linear_miou")).abs() < 0.5,
        "linear mIoU {} vs PyTorch {}",
        ls.miou_pct,
        num("linear_miou")
    );
    let lp: Vec<f64> = ints(&lpred).into_iter().map(|v| v as f64).collect();
    let same = lp.iter().zip(list("linear_pred")).filter(|(a, b)| *a == b).count();
    assert!(same as f64 >= 0.999 * lp.len() as f64, "linear predictions agree on {same} of {} pixels", lp.len());
    assert!(ls.miou_pct > 40.0, "the linear head learned the bands: {}", ls.miou_pct);
}
