//! [`Lewel`]: the online / target encoders and the predictors of LEWEL_B (or BYOL), or the key queue of LEWEL_M
//! (or MoCo v2), its loss and its EMA step.
//!
//! LEWEL: <https://arxiv.org/abs/2203.14898>. Ports `models/lewel.py` (`EncoderObj`, `LEWELB_EMAN`, `LEWELB`) as
//! described in `reference/lewel-official.md` §1.1 (module tree and names), §1.5 (predictors), §1.7/§3 (EMA and the
//! target's BN mode), §1.8 (features) and §2 (loss), plus the alignment maps of §8.
//!
//! NOTE(ref): BYOL is not in the official code. Here it is the same code path without the aligned branch: no
//! `proj_obj` / `predictor_obj`, `proj` applied to the pooled vector alone (BN over b, the standard BYOL neck),
//! and the loss is the global normalised MSE per direction summed over the two directions (α is not applied,
//! i.e. treated as 1).
//!
//! LEWEL_M and MoCo v2 (paper only, `docs/lewel-m.md`): no predictors; the online projector output is the query,
//! the target's output of the other view the key. The global loss is InfoNCE against the key queue, the aligned
//! loss InfoNCE against the other aligned target embeddings of the batch, both with temperature τ and summed over
//! the two directions as in LEWEL_B. The target runs with ShuffleBN when its BN is in train mode (`ema: params`,
//! as MoCo). After the loss the target global embeddings of both views are enqueued.
//!
//! NOTE(ref): MoCo updates the key encoder before the key forward; the loop updates it after the optimiser step.
//! The two are the same sequence of computations: at initialisation target == online, so MoCo's update before
//! step 0 is a no-op, and its update before step i+1 is ours after step i.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use tch::{nn::Path, nn::VarStore, Device, Kind, Tensor};

use super::{
    mlp::Mlp1d,
    moco::MocoState,
    neck::{Neck, NeckOut},
    resnet::ResNet,
    Method, ModelConfig, StateEntry,
};
use crate::amp::{full_precision, Autocast, Precision};
use crate::ema::ema_update;
use crate::loss::{aligned_info_nce, aligned_loss, collapse_std, combine, global_info_nce, global_loss};
use crate::LewelError;

/// `online_net` / `target_net`: a ResNet trunk and the neck.
#[derive(Debug)]
pub struct Encoder {
    pub backbone: ResNet,
    pub neck: Neck,
}

impl Encoder {
    fn new(p: &Path, cfg: &ModelConfig, trainable: bool) -> Result<Self> {
        let s = cfg.bn_splits;
        let backbone = ResNet::new(&p.sub("backbone"), cfg.arch, cfg.stem, cfg.width, s, trainable)?;
        let c = backbone.out_channels();
        let np = p.sub("neck");
        let proj = Mlp1d::new(&np.sub("proj"), c, cfg.hidden_dim, cfg.proj_dim, s, trainable)?;
        let proj_obj = if cfg.method.has_aligned() {
            Some(Mlp1d::new(&np.sub("proj_obj"), c, cfg.hidden_dim, cfg.proj_dim, s, trainable)?)
        } else {
            None
        };
        Ok(Encoder { backbone, neck: Neck::new(proj, proj_obj, cfg.groups, cfg.map_scale) })
    }

    /// # Shapes
    /// `x`: `[b, 3, h, w]` → global `[b, k, 1]`, aligned `[b, k, k/g]` (LEWEL_B, LEWEL_M).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<NeckOut> {
        let f = self.backbone.forward_t(x, train)?;
        let f = if crate::fault::active().detach_backbone { f.detach() } else { f };
        self.neck.forward_t(&f, train)
    }

    fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        self.backbone.state(&super::join(prefix, "backbone"), out);
        self.neck.state(&super::join(prefix, "neck"), out);
    }
}

/// The loss of one training step.
#[derive(Debug)]
pub struct LossTerms {
    /// The scalar to back-propagate: Σ over the two directions of α·L_g + (1 − α)·L_a (BYOL, MoCo v2: Σ L_g).
    /// Range [0, 8] for LEWEL_B / BYOL; for LEWEL_M / MoCo v2 InfoNCE values (≈ 2·ln(1 + K) at init).
    pub total: Tensor,
    /// Σ over the two directions of the global loss (unweighted): normalised MSE in [0, 8], or InfoNCE against
    /// the queue.
    pub global: f64,
    /// Σ over the two directions of the aligned loss (unweighted): normalised MSE in [0, 8], or InfoNCE against the
    /// batch; 0 for BYOL and MoCo v2.
    pub aligned: f64,
    /// Collapse indicator of the online global embedding z_g (before the predictor): std over the batch of the
    /// L2-normalised vectors, averaged over dimensions and over the two views. ≈ 1/sqrt(K) healthy, 0 collapsed.
    pub collapse_std: f64,
    /// The same indicator of the target's global embeddings (what the online network is asked to predict: an
    /// EMAN target whose BN statistics have not calibrated yet gives nearly constant targets, a collapse cause).
    pub target_collapse_std: f64,
    /// LEWEL_B / LEWEL_M: the mean entropy of the online alignment maps of both views over that of uniform maps
    /// (1 = uniform: the spatial part has nothing to act on); None for BYOL and MoCo v2.
    pub map_entropy_ratio: Option<f64>,
}

/// The model: `online_net`, `target_net`, then `predictor`[, `predictor_obj`] (LEWEL_B, BYOL) or `queue`,
/// `queue_ptr`, `shuffle_state` (LEWEL_M, MoCo v2).
#[derive(Debug)]
pub struct Lewel {
    cfg: ModelConfig,
    online: Encoder,
    target: Encoder,
    predictor: Option<Mlp1d>,
    predictor_obj: Option<Mlp1d>,
    moco: Option<MocoState>,
    online_state: Vec<StateEntry>,
    target_state: Vec<StateEntry>,
}

impl Lewel {
    /// Builds the model under `vs.root()` with the official names, in the var store's kind (set it with
    /// `vs.set_kind` before, or call `vs.double()` / `vs.float()` after: `num_batches_tracked` stays int64) and on
    /// its device. Online weights get the official init; the target is a copy of the online network, its entries
    /// are not trainable and never require grad. LEWEL_M / MoCo v2 then draw the queue and the ShuffleBN generator
    /// position from the global RNG.
    pub fn new(vs: &VarStore, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let taken = ["online_net.", "target_net.", "predictor.", "predictor_obj."];
        let moco_names = ["queue", "queue_ptr", "shuffle_state"];
        if let Some(k) =
            vs.variables().keys().find(|k| taken.iter().any(|t| k.starts_with(t)) || moco_names.contains(&k.as_str()))
        {
            bail!("the var store already holds a model ({k}); build each Lewel in its own VarStore");
        }
        let root = vs.root();
        let online = Encoder::new(&root.sub("online_net"), cfg, true)?;
        let target = Encoder::new(&root.sub("target_net"), cfg, false)?;
        let (k, hid, s) = (cfg.proj_dim, cfg.hidden_dim, cfg.bn_splits);
        let (predictor, predictor_obj, moco) = match cfg.method {
            Method::LewelB | Method::Byol => {
                let predictor = Mlp1d::new(&root.sub("predictor"), k, hid, k, s, true)?;
                let predictor_obj = match cfg.method {
                    Method::LewelB => Some(Mlp1d::new(&root.sub("predictor_obj"), k, hid, k, s, true)?),
                    _ => None,
                };
                (Some(predictor), predictor_obj, None)
            }
            Method::LewelM | Method::MocoV2 => (None, None, Some(MocoState::new(&root, k, cfg.queue_size)?)),
        };
        let mut online_state = Vec::new();
        online.state("online_net", &mut online_state);
        let mut target_state = Vec::new();
        target.state("target_net", &mut target_state);
        // the target starts as a copy of the online network (§1.1); buffers hold the same defaults already
        tch::no_grad(|| -> Result<()> {
            for (o, t) in online_state.iter().zip(&target_state) {
                t.tensor.shallow_clone().f_copy_(&o.tensor)?;
            }
            Ok(())
        })?;
        Ok(Lewel { cfg: cfg.clone(), online, target, predictor, predictor_obj, moco, online_state, target_state })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The online encoder (backbone + neck).
    pub fn online(&self) -> &Encoder {
        &self.online
    }

    /// The target encoder.
    pub fn target(&self) -> &Encoder {
        &self.target
    }

    /// The key queue, its pointer and the ShuffleBN generator (LEWEL_M, MoCo v2).
    pub fn moco(&self) -> Option<&MocoState> {
        self.moco.as_ref()
    }

    /// Kind and device of the weights.
    fn kind_device(&self) -> (Kind, Device) {
        let w = &self.online.neck.proj.w0;
        (w.kind(), w.device())
    }

    /// Checks `[b, 3, h, w]` and moves the images to the weights' kind and device.
    fn prepare(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.size4()?;
        if c != 3 {
            bail!("expected images [b, 3, h, w], got {:?}", x.size());
        }
        let (kind, device) = self.kind_device();
        Ok(x.f_to_device(device)?.f_to_kind(kind)?)
    }

    /// The official `loss_func` of one direction: (L_g, L_a) of online view a against target view b. LEWEL_M /
    /// MoCo v2: InfoNCE with τ, the global term against `queue`, the aligned term against the batch.
    ///
    /// The predictors run under `amp` and their outputs are cast back to float32 for the loss
    /// ([`crate::amp::full_precision`]; a no-op without autocast).
    fn direction(
        &self,
        on: &NeckOut,
        tg: &NeckOut,
        queue: Option<&Tensor>,
        amp: Autocast,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(queue) = queue {
            let tau = self.cfg.temperature;
            let lg = global_info_nce(&on.global, &tg.global.detach(), queue, tau)?;
            let la = match (&on.aligned, &tg.aligned) {
                (Some(yo), Some(yt)) if crate::dist::active() => {
                    // the negatives of one process on the whole batch: every rank's target aligned embeddings
                    let all = crate::dist::gather(&yt.detach())?;
                    let first = (crate::dist::rank() as i64) * yo.size()[0];
                    Some(crate::loss::aligned_info_nce_at(yo, &all, first, tau)?)
                }
                (Some(yo), Some(yt)) => Some(aligned_info_nce(yo, &yt.detach(), tau)?),
                _ => None,
            };
            return Ok((lg, la));
        }
        let Some(predictor) = &self.predictor else { bail!("a {} model has no predictor", self.cfg.method) };
        let head = |mlp: &Mlp1d, x: &Tensor| amp.run(|| mlp.forward_t(x, true)).and_then(|p| full_precision(&p));
        let lg = global_loss(&head(predictor, &on.global)?, &tg.global.detach())?;
        let la = match (&self.predictor_obj, &on.aligned, &tg.aligned) {
            (Some(po), Some(yo), Some(yt)) => Some(aligned_loss(&head(po, yo)?, &yt.detach())?),
            _ => None,
        };
        Ok((lg, la))
    }

    /// The target's embeddings of view `view` (0 or 1), without gradient. LEWEL_M / MoCo v2 with the target's BN in
    /// train mode use ShuffleBN: the batch is permuted before the target (so each ghost-BN slice of
    /// `bn_splits` normalises a different mix of images than the online network saw), and the outputs are put
    /// back in the original order.
    ///
    /// On several processes, as MoCo's `batch_shuffle_ddp`: the global batch is gathered from every rank, permuted
    /// (the same permutation everywhere: the generator state is the same), each rank forwards its contiguous slice
    /// of the permuted batch, the outputs are gathered, un-permuted, and each rank keeps its own images. With
    /// `bn_splits` counting slices of the global batch, the BN slices are those of one process, so the run is the
    /// same on 1 or N processes. On one device the `bn_splits` slices play the GPUs.
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → global `[b, k, 1]`, aligned `[b, k, n]`, row i for image i of `x`.
    pub(crate) fn key_forward(&self, x: &Tensor, view: i64) -> Result<NeckOut> {
        let train = self.cfg.ema.target_bn_train();
        tch::no_grad(|| match &self.moco {
            Some(moco) if train && crate::dist::active() => {
                let b = x.size4()?.0;
                let first = crate::dist::rank() as i64 * b;
                let all = crate::dist::gather(x)?; // [B, 3, h, w]
                let big_b = all.size()[0];
                let perm = moco.permutation(big_b, view)?; // [B]
                let inv = perm.f_argsort(0, false)?;
                let out = self.target.forward_t(&all.f_index_select(0, &perm.f_narrow(0, first, b)?)?, true)?;
                let back = |t: &Tensor| -> Result<Tensor> {
                    Ok(crate::dist::gather(t)?.f_index_select(0, &inv)?.f_narrow(0, first, b)?)
                };
                Ok(NeckOut {
                    global: back(&out.global)?,
                    aligned: out.aligned.as_ref().map(back).transpose()?,
                    maps: None,
                })
            }
            Some(moco) if train => {
                let b = x.size4()?.0;
                let perm = moco.permutation(b, view)?; // [b]
                let inv = perm.f_argsort(0, false)?; // [b], inverse permutation
                let out = self.target.forward_t(&x.f_index_select(0, &perm)?, true)?;
                let back = |t: &Tensor| t.f_index_select(0, &inv);
                Ok(NeckOut {
                    global: back(&out.global)?,
                    aligned: out.aligned.as_ref().map(back).transpose()?,
                    maps: None,
                })
            }
            _ => self.target.forward_t(x, train),
        })
    }

    /// The symmetric loss of the two views (§2): online(v1) and online(v2) in separate forward passes (BN in train
    /// mode), the target under no_grad (BN in eval mode for `eman`, train mode for `params`), then
    /// `loss_func(on1, t2) + loss_func(on2, t1)`.
    ///
    /// LEWEL_M / MoCo v2: both directions use the queue as it was before the step; afterwards the target global
    /// embeddings of view 1 and then view 2 are enqueued and the ShuffleBN generator advances. So this call is a
    /// training step's forward: it changes the queue.
    ///
    /// # Shapes
    /// `v1`, `v2`: `[b, 3, h, w]`, the same b (a multiple of `bn_splits`); converted to the weights' kind/device.
    pub fn forward_loss(&self, v1: &Tensor, v2: &Tensor) -> Result<LossTerms> {
        self.forward_loss_amp(v1, v2, Precision::Fp32)
    }

    /// [`Lewel::forward_loss`] with the network forwards (online and target encoders of both views, the
    /// predictors) under autocast to `precision` on the model's device type; their outputs are cast back to
    /// float32 and the losses computed from those (see [`crate::amp`]). `Precision::Fp32` is
    /// [`Lewel::forward_loss`], bit for bit.
    pub fn forward_loss_amp(&self, v1: &Tensor, v2: &Tensor, precision: Precision) -> Result<LossTerms> {
        let amp = Autocast::new(precision, self.kind_device().1)?;
        let (v1, v2) = (self.prepare(v1)?, self.prepare(v2)?);
        if v1.size()[0] != v2.size()[0] {
            bail!("the two views hold different batch sizes: {:?} vs {:?}", v1.size(), v2.size());
        }
        let (on1, on2, t1, t2) = amp.run(|| {
            let on1 = self.online.forward_t(&v1, true)?;
            let on2 = self.online.forward_t(&v2, true)?;
            Ok((on1, on2, self.key_forward(&v1, 0)?, self.key_forward(&v2, 1)?))
        })?;
        let (on1, on2, t1, t2) = if amp.is_on() {
            (on1.full_precision()?, on2.full_precision()?, t1.full_precision()?, t2.full_precision()?)
        } else {
            (on1, on2, t1, t2)
        };
        // The enqueue below writes the queue in place: the loss must hold its own copy (autograd keeps it for the
        // backward pass of q · queue).
        let queue = match &self.moco {
            Some(m) => Some(m.queue.f_detach_copy()?), // [k, K]
            None => None,
        };
        let (g12, a12) = self.direction(&on1, &t2, queue.as_ref(), amp)?;
        let (g21, a21) = self.direction(&on2, &t1, queue.as_ref(), amp)?;
        let (total, aligned) = match (a12, a21) {
            (Some(a12), Some(a21)) => {
                let alpha = self.cfg.alpha;
                let total = combine(alpha, &g12, &a12) + combine(alpha, &g21, &a21);
                (total, (a12 + a21).f_double_value(&[])?)
            }
            _ => (&g12 + &g21, 0.0),
        };
        let global = (g12 + g21).f_double_value(&[])?;
        let c1 = collapse_std(&on1.global.f_squeeze_dim(2)?)?;
        let c2 = collapse_std(&on2.global.f_squeeze_dim(2)?)?;
        let tc = (collapse_std(&t1.global.f_squeeze_dim(2)?)? + collapse_std(&t2.global.f_squeeze_dim(2)?)?) / 2.0;
        let entropy = match (&on1.maps, &on2.maps) {
            (Some(a), Some(b)) => Some((super::neck::map_entropy_ratio(a)? + super::neck::map_entropy_ratio(b)?) / 2.0),
            _ => None,
        };
        if let Some(moco) = &self.moco {
            // every rank enqueues the keys of the whole global batch (view 1 of all images, then view 2)
            let (k1, k2) = (
                crate::dist::gather(&t1.global.f_squeeze_dim(2)?)?,
                crate::dist::gather(&t2.global.f_squeeze_dim(2)?)?,
            );
            let keys = Tensor::f_cat(&[k1, k2], 0)?; // [2B, k]
            moco.enqueue(&keys)?;
            moco.advance()?;
        }
        Ok(LossTerms {
            total,
            global,
            aligned,
            collapse_std: (c1 + c2) / 2.0,
            target_collapse_std: tc,
            map_entropy_ratio: entropy,
        })
    }

    /// The EMA step of the target with momentum `m` (see [`crate::schedule::ema_momentum`]): the whole state for
    /// `eman` (`num_batches_tracked` copied), parameters only for `params` (§3).
    pub fn momentum_update(&self, m: f64) {
        ema_update(&self.online_state, &self.target_state, self.cfg.ema, m);
    }

    /// Inference features (§1.8): global average pool of the online backbone, BN in eval mode, no gradient.
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → `[b, c]` (c = 2048 for the standard ResNet-50).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.prepare(x)?;
        tch::no_grad(|| {
            let f = self.online.backbone.forward_t(&x, false)?; // [b, c, h', w']
            Ok(f.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, 3)?) // [b, c]
        })
    }

    /// Inference feature maps of the online backbone's stages (1-based, e.g. `[3, 4]`), BN in eval mode, no
    /// gradient: what a dense probe reads.
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → one `[b, c_s, h_s, w_s]` map per requested stage s, in the order asked.
    pub fn feature_maps(&self, x: &Tensor, stages: &[usize]) -> Result<Vec<Tensor>> {
        if let Some(s) = stages.iter().find(|&&s| !(1..=4).contains(&s)) {
            bail!("backbone stage {s} does not exist; stages are 1 to 4");
        }
        let x = self.prepare(x)?;
        tch::no_grad(|| {
            let all = self.online.backbone.forward_stages(&x, false)?;
            Ok(stages.iter().map(|&s| all[s - 1].shallow_clone()).collect())
        })
    }

    /// The online network's alignment maps (§8): softmax over positions of the normalised heat-maps, BN in eval
    /// mode, no gradient. An error for BYOL and MoCo v2.
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → `[b, k, h', w']` (h' = h/32 for the ImageNet stem); each map sums to 1.
    pub fn alignment_maps(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.prepare(x)?;
        tch::no_grad(|| self.online.neck.alignment_maps(&self.online.backbone.forward_t(&x, false)?, false))
    }

    /// The trainable parameters (online network and predictors) with their official names, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .online_state
            .iter()
            .chain(&self.predictors_state())
            .filter(|e| e.is_param)
            .map(|e| (e.name.clone(), e.tensor.shallow_clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn predictors_state(&self) -> Vec<StateEntry> {
        let mut out = Vec::new();
        if let Some(p) = &self.predictor {
            p.state("predictor", &mut out);
        }
        if let Some(po) = &self.predictor_obj {
            po.state("predictor_obj", &mut out);
        }
        out
    }

    /// Every entry of the official `state_dict` (parameters, running stats, `num_batches_tracked`), in its order:
    /// `online_net.*`, `target_net.*`, `predictor.*`, `predictor_obj.*`; LEWEL_M / MoCo v2: `online_net.*`,
    /// `target_net.*`, `queue`, `queue_ptr`, `shuffle_state`. The tensors are shallow clones of the model's (they
    /// alias it).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.state_entries().into_iter().map(|e| (e.name, e.tensor)).collect()
    }

    /// Like [`Lewel::state_dict`], with the parameter / buffer flag.
    pub fn state_entries(&self) -> Vec<StateEntry> {
        let mut out = Vec::new();
        for e in self.online_state.iter().chain(&self.target_state) {
            out.push(StateEntry { name: e.name.clone(), tensor: e.tensor.shallow_clone(), is_param: e.is_param });
        }
        out.extend(self.predictors_state());
        if let Some(m) = &self.moco {
            m.state("", &mut out);
        }
        out
    }

    /// Copies `map` into the model. Every missing, unexpected and mis-shaped key is collected first; mis-shaped keys
    /// always fail, missing / unexpected keys only when `strict`. On error nothing is copied. Values are converted to
    /// the entry's kind and device.
    ///
    /// The error's `path` is a placeholder (`<state dict>`): callers that read a file put its path there.
    pub fn load_state_dict(&self, map: &HashMap<String, Tensor>, strict: bool) -> Result<usize, LewelError> {
        let entries = self.state_entries();
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        let mut counters = Vec::new();
        for e in &entries {
            match map.get(&e.name) {
                // as PyTorch's BatchNorm loading: a state without its counters (older checkpoints, many
                // conversion scripts) loads, with the counters at 0
                None if e.name.ends_with(NUM_BATCHES_TRACKED) => counters.push(e.tensor.shallow_clone()),
                None => missing.push(e.name.clone()),
                Some(t) if t.size() != e.tensor.size() => mismatched.push((e.name.clone(), e.tensor.size(), t.size())),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut unexpected: Vec<String> = map.keys().filter(|k| !known.contains(k.as_str())).cloned().collect();
        unexpected.sort();
        if !mismatched.is_empty() || (strict && (!missing.is_empty() || !unexpected.is_empty())) {
            return Err(LewelError::KeysMismatch {
                path: PathBuf::from("<state dict>"),
                missing,
                unexpected,
                mismatched,
            });
        }
        tch::no_grad(|| {
            for e in &entries {
                if let Some(src) = map.get(&e.name) {
                    e.tensor.shallow_clone().copy_(src);
                }
            }
            for c in &counters {
                let _ = c.shallow_clone().zero_();
            }
        });
        Ok(counters.len())
    }
}

/// The name ending of BatchNorm's step counters, the one kind of entry a state may lack
/// ([`Lewel::load_state_dict`] returns how many were missing and set to 0).
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, Stem};
    use crate::optim::{OptimConfig, Optimizer};

    /// A bare step in the official order for the model's own tests (loss of the two views, zero_grad, backward,
    /// optimizer step with `lr`, EMA update with momentum `m`), returning the loss terms computed before the update.
    /// The step `pretrain` ships, which the golden tests pin, is `train::PretrainStep`.
    fn train_step(model: &Lewel, opt: &mut Optimizer, v1: &Tensor, v2: &Tensor, lr: f64, m: f64) -> Result<LossTerms> {
        let terms = model.forward_loss(v1, v2)?;
        opt.zero_grad();
        terms.total.f_backward()?;
        opt.step(lr);
        model.momentum_update(m);
        Ok(terms)
    }

    fn tiny(method: Method) -> ModelConfig {
        let ema = if method.contrastive() { crate::ema::EmaMode::Params } else { crate::ema::EmaMode::Eman };
        ModelConfig {
            method,
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 16,
            proj_dim: 16,
            hidden_dim: 32,
            groups: 4,
            ema,
            queue_size: 12,
            ..ModelConfig::default()
        }
    }

    fn images(b: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([b, 3, 16, 16], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn names_match_the_official_state_dict() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelB)).unwrap();
        let mut want: Vec<String> = vs.variables().into_keys().collect();
        want.sort();
        let mut got: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
        got.sort();
        assert_eq!(got, want);
        for k in [
            "online_net.backbone.layer2.0.downsample.1.running_var",
            "online_net.neck.proj.mlp.1.num_batches_tracked",
            "target_net.neck.proj_obj.mlp.3.weight",
            "predictor.mlp.0.weight",
            "predictor_obj.mlp.1.bias",
        ] {
            assert!(got.iter().any(|g| g == k), "{k}");
        }
        // only online + predictors are trainable
        let trainable = model.trainable();
        assert_eq!(trainable.len(), vs.trainable_variables().len());
        assert!(trainable.iter().all(|(k, t)| !k.starts_with("target_net") && t.requires_grad()));
        assert!(model
            .state_dict()
            .iter()
            .filter(|(k, _)| k.starts_with("target_net"))
            .all(|(_, t)| !t.requires_grad()));
    }

    #[test]
    fn resnet50_parameter_counts() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &ModelConfig::default()).unwrap();
        let count = |prefix: &str| -> i64 {
            model
                .state_entries()
                .iter()
                .filter(|e| e.is_param && e.name.starts_with(prefix))
                .map(|e| e.tensor.numel() as i64)
                .sum()
        };
        assert_eq!(count("online_net.backbone."), 23_508_032);
        assert_eq!(count("online_net.neck.proj."), 9_445_376);
        assert_eq!(count("online_net.neck.proj_obj."), 9_445_376);
        assert_eq!(count("online_net."), 42_398_784);
        assert_eq!(count("target_net."), 42_398_784);
        assert_eq!(count("predictor."), 2_105_344);
        assert_eq!(count("predictor_obj."), 2_105_344);
        // 678 state_dict entries (§7)
        assert_eq!(model.state_dict().len(), 678);
    }

    #[test]
    fn target_starts_as_copy_and_step_trains() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelB)).unwrap();
        let vars = vs.variables();
        for (k, t) in &vars {
            if let Some(rest) = k.strip_prefix("online_net.") {
                assert!(t.equal(&vars[&format!("target_net.{rest}")]), "{k}");
            }
        }
        let mut opt = Optimizer::new(model.trainable(), &OptimConfig::default());
        let (v1, v2) = (images(4, 1), images(4, 2));
        let before = vars["online_net.backbone.conv1.weight"].copy();
        let t0 = train_step(&model, &mut opt, &v1, &v2, 0.1, 0.9).unwrap();
        assert!(t0.total.double_value(&[]) > 0.0 && t0.total.double_value(&[]) < 8.0);
        assert!((t0.total.double_value(&[]) - 0.5 * (t0.global + t0.aligned)).abs() < 1e-5);
        assert!(t0.collapse_std > 0.0);
        assert!(!before.equal(&vars["online_net.backbone.conv1.weight"]));
        // every trainable parameter received a gradient
        assert!(model.trainable().iter().all(|(_, t)| t.grad().defined()));
        assert_eq!(opt.state().len(), model.trainable().len());
        // eman: target running stats moved towards the online ones, counter copied
        let n = vars["target_net.backbone.bn1.num_batches_tracked"].int64_value(&[]);
        assert_eq!(n, 2);
    }

    #[test]
    fn lewel_m_names_no_predictors_and_a_queue() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelM)).unwrap();
        let mut want: Vec<String> = vs.variables().into_keys().collect();
        want.sort();
        let names: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
        let mut got = names.clone();
        got.sort();
        assert_eq!(got, want);
        assert!(names.iter().all(|k| !k.starts_with("predictor")));
        assert_eq!(&names[names.len() - 3..], ["queue", "queue_ptr", "shuffle_state"]);
        assert!(names.iter().any(|k| k == "target_net.neck.proj_obj.mlp.3.weight"));
        let sd: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
        assert_eq!(sd["queue"].size(), [16, 12]);
        assert_eq!(sd["queue_ptr"].kind(), Kind::Int64);
        assert!(model.trainable().iter().all(|(k, _)| k.starts_with("online_net.")));
        // the same var store cannot take a second model
        assert!(Lewel::new(&vs, &tiny(Method::MocoV2)).is_err());
    }

    #[test]
    fn lewel_m_step_uses_and_fills_the_queue() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelM)).unwrap();
        let moco = model.moco().unwrap();
        let queue0 = moco.queue.copy();
        let (v1, v2) = (images(4, 1), images(4, 2));
        let t = model.forward_loss(&v1, &v2).unwrap();
        let total = t.total.double_value(&[]);
        assert!((total - 0.5 * (t.global + t.aligned)).abs() < 1e-5);
        // InfoNCE over c candidates with logits in [-1/τ, 1/τ] lies in (0, ln c + 2/τ); two directions. Global: 12
        // queue keys + 1 positive; aligned: b*n = 4*4 = 16 candidates.
        let bound = |c: f64| 2.0 * (c.ln() + 2.0 / 0.2);
        assert!(t.global > 0.0 && t.global < bound(13.0), "{}", t.global);
        assert!(t.aligned > 0.0 && t.aligned < bound(16.0), "{}", t.aligned);
        // pointer at 2b = 8; columns 0..4 hold the normalised target global embeddings of view 1, 4..8 of view 2,
        // the rest is untouched
        assert_eq!(moco.queue_ptr.int64_value(&[0]), 8);
        let key = |x: &Tensor| {
            let g = tch::no_grad(|| model.target.forward_t(x, true).unwrap().global.squeeze_dim(2));
            crate::loss::l2_normalize(&g, 1).unwrap().transpose(0, 1)
        };
        assert!(moco.queue.narrow(1, 0, 4).allclose(&key(&v1), 1e-5, 1e-6, false));
        assert!(moco.queue.narrow(1, 4, 4).allclose(&key(&v2), 1e-5, 1e-6, false));
        assert!(moco.queue.narrow(1, 8, 4).equal(&queue0.narrow(1, 8, 4)));
        // the loss used the queue as it was before: backward works (the loss holds its own copy) and every online
        // parameter gets a gradient
        t.total.backward();
        assert!(model.trainable().iter().all(|(_, p)| p.grad().defined()));
        // next step wraps: 8 + 8 = 16 = 4 mod 12
        model.forward_loss(&v1, &v2).unwrap();
        assert_eq!(moco.queue_ptr.int64_value(&[0]), 4);
    }

    #[test]
    fn shuffle_bn_permutes_and_restores_the_order() {
        let x = images(4, 9);
        for splits in [1, 2] {
            let vs = VarStore::new(Device::Cpu);
            let model = Lewel::new(&vs, &ModelConfig { bn_splits: splits, ..tiny(Method::LewelM) }).unwrap();
            let moco = model.moco().unwrap();
            // pick a generator position whose permutation mixes the two halves of the batch (the first BN slice
            // gets one image of each half; [2, 3, 0, 1] would only swap the slices)
            let mut mixes = false;
            for _ in 0..50 {
                let p = Vec::<i64>::try_from(moco.permutation(4, 0).unwrap()).unwrap();
                mixes = (p[0] >= 2) != (p[1] >= 2);
                if mixes {
                    break;
                }
                moco.advance().unwrap();
            }
            assert!(mixes);
            let perm = moco.permutation(4, 0).unwrap();
            assert_ne!(Vec::<i64>::try_from(&perm).unwrap(), [0, 1, 2, 3]);
            let shuffled = model.key_forward(&x, 0).unwrap();
            let plain = tch::no_grad(|| model.target.forward_t(&x, true).unwrap());
            // by hand: the target on the permuted batch, rows put back where they came from
            let by_hand = tch::no_grad(|| model.target.forward_t(&x.index_select(0, &perm), true).unwrap());
            let inv = perm.argsort(0, false);
            let g = by_hand.global.index_select(0, &inv);
            let a = by_hand.aligned.unwrap().index_select(0, &inv);
            assert!(shuffled.global.equal(&g));
            assert!(shuffled.aligned.as_ref().unwrap().equal(&a));
            let same = shuffled.global.allclose(&plain.global, 1e-4, 1e-5, false)
                && shuffled.aligned.as_ref().unwrap().allclose(plain.aligned.as_ref().unwrap(), 1e-4, 1e-5, false);
            // one BN slice: the order does not matter up to rounding; two slices: the slices see other images
            let diff = (&shuffled.global - &plain.global).abs().max().double_value(&[]);
            assert_eq!(same, splits == 1, "bn_splits {splits}: max diff {diff}");
            assert!(!shuffled.global.requires_grad());
        }
        // target BN in eval mode (eman): no shuffle at all
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig { ema: crate::ema::EmaMode::Eman, bn_splits: 2, ..tiny(Method::LewelM) };
        let model = Lewel::new(&vs, &cfg).unwrap();
        let plain = tch::no_grad(|| model.target.forward_t(&x, false).unwrap());
        assert!(model.key_forward(&x, 0).unwrap().global.equal(&plain.global));
    }

    #[test]
    fn mocov2_has_no_aligned_branch_and_no_predictor() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::MocoV2)).unwrap();
        assert!(vs.variables().keys().all(|k| !k.contains("proj_obj") && !k.starts_with("predictor")));
        let t = model.forward_loss(&images(4, 3), &images(4, 4)).unwrap();
        assert_eq!(t.aligned, 0.0);
        assert!((t.total.double_value(&[]) - t.global).abs() < 1e-6);
        assert!(model.alignment_maps(&images(2, 5)).is_err());
        assert_eq!(model.features(&images(2, 5)).unwrap().size(), [2, 128]);
        let mut opt = Optimizer::new(model.trainable(), &OptimConfig::default());
        train_step(&model, &mut opt, &images(4, 3), &images(4, 4), 0.1, 0.999).unwrap();
    }

    #[test]
    fn queue_and_temperature_are_validated() {
        // the queue against the data: `train::check_fits_data`
        assert!(ModelConfig { temperature: 0.0, ..tiny(Method::LewelM) }.validate().is_err());
        assert!(ModelConfig { queue_size: 0, ..tiny(Method::MocoV2) }.validate().is_err());
        assert!(ModelConfig { temperature: 0.0, ..tiny(Method::LewelB) }.validate().is_ok());
        assert_eq!(Method::LewelM.to_string(), "lewel-m");
        assert_eq!(serde_json::to_value(Method::MocoV2).unwrap(), "mocov2");
    }

    #[test]
    fn byol_has_no_aligned_branch() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::Byol)).unwrap();
        assert!(vs.variables().keys().all(|k| !k.contains("proj_obj") && !k.contains("predictor_obj")));
        let t = model.forward_loss(&images(4, 3), &images(4, 4)).unwrap();
        assert_eq!(t.aligned, 0.0);
        assert!((t.total.double_value(&[]) - t.global).abs() < 1e-6);
        assert!(model.alignment_maps(&images(2, 5)).is_err());
        assert_eq!(model.features(&images(2, 5)).unwrap().size(), [2, 128]);
    }

    #[test]
    fn inference_helpers_and_bad_input() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelB)).unwrap();
        let x = images(3, 6);
        let f = model.features(&x).unwrap();
        assert_eq!(f.size(), [3, 128]);
        assert!(!f.requires_grad());
        let maps = model.alignment_maps(&x).unwrap();
        assert_eq!(maps.size(), [3, 16, 2, 2]);
        // eval mode changes no running statistic
        let n = vs.variables()["online_net.backbone.bn1.num_batches_tracked"].int64_value(&[]);
        assert_eq!(n, 0);
        assert!(model.features(&x.narrow(1, 0, 2)).is_err());
        assert!(model.features(&x.flatten(2, 3)).is_err());
        assert!(model.forward_loss(&images(4, 1), &images(2, 1)).is_err());
    }

    #[test]
    fn load_state_dict_lists_every_problem() {
        let vs = VarStore::new(Device::Cpu);
        let model = Lewel::new(&vs, &tiny(Method::LewelB)).unwrap();
        let mut map: HashMap<String, Tensor> = model.state_dict().into_iter().map(|(k, v)| (k, v.copy())).collect();
        assert!(model.load_state_dict(&map, true).is_ok());
        map.remove("predictor.mlp.0.weight");
        map.insert("extra.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        match model.load_state_dict(&map, true) {
            Err(LewelError::KeysMismatch { missing, unexpected, mismatched, .. }) => {
                assert_eq!(missing, ["predictor.mlp.0.weight"]);
                assert_eq!(unexpected, ["extra.weight"]);
                assert!(mismatched.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(model.load_state_dict(&map, false).is_ok());
        map.insert("predictor.mlp.3.weight".into(), Tensor::zeros([2, 2, 1], (Kind::Float, Device::Cpu)));
        assert!(matches!(model.load_state_dict(&map, false), Err(LewelError::KeysMismatch { .. })));
        // a load really copies, int64 counters included
        let mut map2: HashMap<String, Tensor> = HashMap::new();
        map2.insert("online_net.backbone.bn1.num_batches_tracked".into(), Tensor::from(5i64));
        model.load_state_dict(&map2, false).unwrap();
        assert_eq!(vs.variables()["online_net.backbone.bn1.num_batches_tracked"].int64_value(&[]), 5);
        // a strict load of a state without its BN counters: accepted, counted, counters at 0
        let full: HashMap<String, Tensor> = model.state_dict().into_iter().map(|(k, v)| (k, v.copy())).collect();
        let n = full.keys().filter(|k| k.ends_with(NUM_BATCHES_TRACKED)).count();
        let without: HashMap<String, Tensor> = full
            .iter()
            .filter(|(k, _)| !k.ends_with(NUM_BATCHES_TRACKED))
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        assert!(n > 10);
        assert_eq!(model.load_state_dict(&without, true).unwrap(), n);
        assert_eq!(vs.variables()["online_net.backbone.bn1.num_batches_tracked"].int64_value(&[]), 0);
        assert_eq!(model.load_state_dict(&full, true).unwrap(), 0);
    }

    #[test]
    fn config_serde_names() {
        let json = serde_json::to_value(ModelConfig::default()).unwrap();
        assert_eq!(json["method"], "lewel-b");
        assert_eq!(json["arch"], "resnet50");
        assert_eq!(json["stem"], "imagenet");
        assert_eq!(json["ema"], "eman");
        let byol: ModelConfig = serde_json::from_value(serde_json::json!({
            "method": "byol", "arch": "resnet18", "stem": "cifar", "width": 32, "proj_dim": 128,
            "hidden_dim": 512, "groups": 4, "map_scale": 1.0, "alpha": 0.5, "ema": "params", "bn_splits": 2
        }))
        .unwrap();
        assert_eq!(
            (byol.method, byol.arch, byol.stem, byol.ema),
            (Method::Byol, Arch::Resnet18, Stem::Cifar, crate::ema::EmaMode::Params)
        );
        assert!(ModelConfig { groups: 3, ..ModelConfig::default() }.validate().is_err());
        assert!(ModelConfig { alpha: 1.5, ..ModelConfig::default() }.validate().is_err());
        assert!(ModelConfig { bn_splits: 0, ..ModelConfig::default() }.validate().is_err());
    }

    #[test]
    fn ghost_bn_config_runs() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig { bn_splits: 2, ..tiny(Method::LewelB) };
        let model = Lewel::new(&vs, &cfg).unwrap();
        assert!(model.forward_loss(&images(4, 1), &images(4, 2)).is_ok());
        assert!(model.forward_loss(&images(3, 1), &images(3, 2)).is_err());
        assert!(Lewel::new(&vs, &cfg).is_err()); // names taken
    }

    #[test]
    fn resume_from_state_dict_and_optimizer_state_is_bit_exact() {
        resume_is_bit_exact_for(tiny(Method::LewelB));
    }

    /// The queue, its pointer and the ShuffleBN generator travel in the state dict: a resume continues exactly.
    #[test]
    fn lewel_m_resume_with_queue_is_bit_exact() {
        resume_is_bit_exact_for(ModelConfig { bn_splits: 2, ..tiny(Method::LewelM) });
    }

    fn resume_is_bit_exact_for(cfg: ModelConfig) {
        let ocfg = OptimConfig::default();
        let (v1, v2) = (images(4, 7), images(4, 8));
        let steps = |model: &Lewel, opt: &mut Optimizer, range: std::ops::Range<u64>| -> Vec<f64> {
            range
                .map(|i| {
                    let m = crate::schedule::ema_momentum(0.98, i, 10);
                    train_step(model, opt, &v1, &v2, 0.05 * (i + 1) as f64, m).unwrap().total.double_value(&[])
                })
                .collect()
        };
        let snapshot = |named: Vec<(String, Tensor)>| -> HashMap<String, Tensor> {
            named.into_iter().map(|(k, v)| (k, v.detach().copy())).collect()
        };
        let fresh = |init: &HashMap<String, Tensor>| -> (VarStore, Lewel) {
            let vs = VarStore::new(Device::Cpu);
            let model = Lewel::new(&vs, &cfg).unwrap();
            model.load_state_dict(init, true).unwrap();
            (vs, model)
        };
        let vs0 = VarStore::new(Device::Cpu);
        let m0 = Lewel::new(&vs0, &cfg).unwrap();
        let init = snapshot(m0.state_dict());
        // straight run of 4 steps
        let (_vs_a, a) = fresh(&init);
        let mut opt_a = Optimizer::new(a.trainable(), &ocfg);
        let losses_a = steps(&a, &mut opt_a, 0..4);
        // 2 steps, checkpoint (model state + momentum buffers), fresh model and optimizer, 2 more steps
        let (_vs_b, b) = fresh(&init);
        let mut opt_b = Optimizer::new(b.trainable(), &ocfg);
        let mut losses_b = steps(&b, &mut opt_b, 0..2);
        let mut ckpt = snapshot(b.state_dict());
        ckpt.extend(snapshot(opt_b.state()));
        let model_keys: HashMap<String, Tensor> = ckpt
            .iter()
            .filter(|(k, _)| !k.starts_with("optimizer."))
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        let (_vs_c, c) = fresh(&model_keys);
        let mut opt_c = Optimizer::new(c.trainable(), &ocfg);
        opt_c.load_state(&ckpt).unwrap();
        losses_b.extend(steps(&c, &mut opt_c, 2..4));
        assert_eq!(losses_a, losses_b);
        let end_a = a.state_dict();
        for ((ka, ta), (kc, tc)) in end_a.iter().zip(c.state_dict()) {
            assert_eq!(ka, &kc);
            assert!(ta.equal(&tc), "{ka} differs after resume");
        }
    }
}
