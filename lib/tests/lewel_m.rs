//! LEWEL_M's InfoNCE losses against a direct PyTorch computation of the paper's formula (Eq. 4) on the same
//! tensors: the aligned loss (negatives = the other target aligned embeddings of the batch) and the global loss
//! (negatives = the queue), values and gradients.
//!
//! PyTorch computes each term with explicit loops over the queries, `−log(exp(s⁺/τ) / Σ exp(s/τ))`, so it shares
//! no code path with ours (one matmul and a cross-entropy). Needs `.venv/bin/python` with torch (made by
//! `scripts/setup.sh`, which `make test` runs first).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use lewel::loss::{aligned_info_nce, global_info_nce};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = r#"
import json, sys, torch
d = json.load(sys.stdin)
t = lambda key: torch.tensor(d[key], dtype=torch.float64).reshape(d[key + "_shape"])
tau = d["tau"]

def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())

# aligned: query (i, j) = online[i, :, j]; candidates = every target[i2, :, j2]; positive (i, j)
on = t("online").requires_grad_(True)
tg = t("target")
b, k, n = on.shape
terms = []
for i in range(b):
    for j in range(n):
        logits = torch.stack([cos(on[i, :, j], tg[i2, :, j2]) / tau for i2 in range(b) for j2 in range(n)])
        terms.append(torch.logsumexp(logits, 0) - logits[i * n + j])
aligned = torch.stack(terms).mean()
aligned.backward()

# global: query i = zo[i, :, 0]; positive zt[i, :, 0]; negatives = the queue's columns
zo = t("zo").requires_grad_(True)
zt = t("zt")
queue = t("queue")
terms = []
for i in range(zo.shape[0]):
    q = zo[i, :, 0]
    logits = torch.stack([cos(q, zt[i, :, 0]) / tau] + [(q / q.norm()) @ queue[:, m] / tau for m in range(queue.shape[1])])
    terms.append(torch.logsumexp(logits, 0) - logits[0])
glob = torch.stack(terms).mean()
glob.backward()
print(json.dumps({"aligned": aligned.item(), "aligned_grad": on.grad.flatten().tolist(),
                  "global": glob.item(), "global_grad": zo.grad.flatten().tolist()}))
"#;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (make test does)", p.display());
    p
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.flatten(0, -1)).unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

#[test]
fn info_nce_losses_match_pytorch() {
    tch::manual_seed(11);
    let opts = (Kind::Double, Device::Cpu);
    let (b, k, n, kq, tau) = (3, 5, 4, 7, 0.2);
    let online = Tensor::randn([b, k, n], opts).set_requires_grad(true);
    let target = Tensor::randn([b, k, n], opts);
    let zo = Tensor::randn([b, k, 1], opts).set_requires_grad(true);
    let zt = Tensor::randn([b, k, 1], opts);
    let queue = lewel::loss::l2_normalize(&Tensor::randn([k, kq], opts), 0).unwrap();

    let aligned = aligned_info_nce(&online, &target, tau).unwrap();
    aligned.backward();
    let global = global_info_nce(&zo, &zt, &queue, tau).unwrap();
    global.backward();

    let mut input = serde_json::Map::new();
    for (key, t) in [("online", &online), ("target", &target), ("zo", &zo), ("zt", &zt), ("queue", &queue)] {
        input.insert(key.into(), json!(values(&t.detach())));
        input.insert(format!("{key}_shape"), json!(t.size()));
    }
    input.insert("tau".into(), json!(tau));

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
    let num = |key: &str| want[key].as_f64().unwrap();
    let list = |key: &str| -> Vec<f64> { want[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };

    close(&[aligned.double_value(&[])], &[num("aligned")], 1e-12);
    close(&values(&online.grad()), &list("aligned_grad"), 1e-10);
    close(&[global.double_value(&[])], &[num("global")], 1e-12);
    close(&values(&zo.grad()), &list("global_grad"), 1e-10);
    // sanity: b·n = 12 candidates per aligned query, 1 + 7 per global one; random inputs stay near ln(candidates)
    assert!(num("aligned") > 0.0 && num("global") > 0.0);
}
