//! The LEWEL_B, BYOL, LEWEL_M and MoCo v2 models: backbones, heads, the coupled neck and the two-network wrapper.
//!
//! LEWEL is "Learning Where to Learn in Cross-View Self-Supervised Learning" (Huang et al., CVPR 2022,
//! <https://arxiv.org/abs/2203.14898>). This module ports `models/lewel.py` and `backbone/resnet.py` of the
//! official code as described in `reference/lewel-official.md` §1 (model), §2 (losses) and §3 (EMA / EMAN).
//! LEWEL_M and MoCo v2 have no official code; they follow the paper (§1.9) and MoCo, with the choices of
//! `docs/lewel-m.md`.
//!
//! Layout:
//! - [`batchnorm`]: our own BatchNorm (PyTorch buffers incl. `num_batches_tracked`, ghost-BN slices).
//! - [`resnet`]: ResNet-18/34/50, torchvision v1.5 layout and names, ImageNet or CIFAR stem, width multiplier.
//! - [`mlp`]: `MLP1D`, the 1×1-conv projector / predictor.
//! - [`neck`]: the LEWEL coupled head (global vector, alignment maps, aligned representations) and the BYOL /
//!   MoCo neck.
//! - [`moco`]: the key queue and ShuffleBN of LEWEL_M and MoCo v2.
//! - [`lewel`]: [`Lewel`], the online / target / predictors (or queue) wrapper with the loss and the EMA update
//!   (the training step itself is `train::PretrainStep`).
//!
//! Every tensor lives in the caller's `VarStore` under the official `state_dict` name (without DDP's
//! `module.` prefix): `online_net.backbone.layer1.0.conv1.weight`, `target_net.neck.proj.mlp.1.running_var`,
//! `predictor_obj.mlp.3.weight`, …; LEWEL_M / MoCo v2 add `queue`, `queue_ptr` and `shuffle_state`.

pub mod batchnorm;
pub mod lewel;
pub mod mlp;
pub mod moco;
pub mod neck;
pub mod resnet;

pub use crate::ema::EmaMode;
pub use lewel::{Lewel, LossTerms};

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which self-supervised method the model implements.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Method {
    /// LEWEL_B (official code): global + aligned BYOL losses over the coupled head (§1.4, §2).
    #[serde(rename = "lewel-b")]
    LewelB,
    /// BYOL: the same networks without the aligned branch; the projector sees only the pooled vector.
    #[serde(rename = "byol")]
    Byol,
    /// LEWEL_M (paper only): global InfoNCE against a key queue + aligned InfoNCE against the batch, over the
    /// coupled head; no predictors, ShuffleBN in the target (`docs/lewel-m.md`).
    #[serde(rename = "lewel-m")]
    LewelM,
    /// MoCo v2: LEWEL_M without the aligned branch (the projector sees only the pooled vector).
    #[serde(rename = "mocov2")]
    MocoV2,
}

impl Method {
    /// The name used in configurations and on the command line (`lewel-b`, `byol`, `lewel-m`, `mocov2`).
    pub fn name(self) -> &'static str {
        match self {
            Method::LewelB => "lewel-b",
            Method::Byol => "byol",
            Method::LewelM => "lewel-m",
            Method::MocoV2 => "mocov2",
        }
    }

    /// Whether the model has the aligned branch (`proj_obj`, alignment maps, the aligned loss).
    pub fn has_aligned(self) -> bool {
        matches!(self, Method::LewelB | Method::LewelM)
    }

    /// Whether the loss is InfoNCE with a key queue and ShuffleBN (LEWEL_M, MoCo v2) rather than the normalised
    /// MSE with predictors (LEWEL_B, BYOL).
    pub fn contrastive(self) -> bool {
        matches!(self, Method::LewelM | Method::MocoV2)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The ResNet depth.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    Resnet18,
    #[serde(rename = "resnet34")]
    Resnet34,
    #[serde(rename = "resnet50")]
    Resnet50,
}

/// The ResNet stem.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Stem {
    /// torchvision: 7×7 conv stride 2 pad 3, BN, ReLU, 3×3 max-pool stride 2 (output stride 32).
    #[serde(rename = "imagenet")]
    Imagenet,
    /// Small images: 3×3 conv stride 1 pad 1, BN, ReLU, no max-pool (output stride 8).
    #[serde(rename = "cifar")]
    Cifar,
}

/// Everything that fixes the shape and the numerics of a [`Lewel`] model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// LEWEL_B, BYOL, LEWEL_M or MoCo v2.
    pub method: Method,
    /// Backbone depth (official: resnet50).
    pub arch: Arch,
    /// Backbone stem (official: imagenet).
    pub stem: Stem,
    /// Base width of the ResNet: channels of the stem and of stage 1 (64 = standard; 16 or 32 for small runs).
    pub width: i64,
    /// K, the projection / embedding dimension and number of alignment maps (official 256).
    pub proj_dim: i64,
    /// Hidden width of the projector and predictor MLPs (official 4096).
    pub hidden_dim: i64,
    /// G, the number of channel groups of the aligned representations (official `num_heads` 4).
    pub groups: i64,
    /// s, the divisor of the L2-normalised heat-maps before the softmax (official `scale` 1.0).
    pub map_scale: f64,
    /// α, the weight of the GLOBAL loss; the aligned loss gets 1 − α (official `loss_weight` 0.5, §2).
    pub alpha: f64,
    /// `eman`: EMA of the whole state, target BN in eval mode (official LEWELB_EMAN); `params`: EMA of the
    /// parameters only, target BN in train mode (official LEWELB).
    pub ema: EmaMode,
    /// Ghost-BN slices: every BatchNorm in train mode normalises each of `bn_splits` equal slices of the batch
    /// with its own statistics, like per-GPU BN on `bn_splits` GPUs (1 = ordinary BN over the whole batch).
    pub bn_splits: i64,
    /// SyncBatchNorm: with several processes, every train-mode BN normalises over the whole global batch
    /// ([`batchnorm::set_sync`]); `bn_splits` must then be 1. No effect on one process (where BN already sees the
    /// whole batch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
    /// τ, the InfoNCE temperature of LEWEL_M and MoCo v2, for both losses (paper 0.2); unused by LEWEL_B / BYOL.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Number of negative keys in the FIFO queue of the global InfoNCE (LEWEL_M, MoCo v2; MoCo's default 65536).
    /// At least the 2·batch keys one step enqueues, at most the images one epoch delivers. Unused by LEWEL_B / BYOL.
    #[serde(default = "default_queue_size")]
    pub queue_size: i64,
}

fn default_temperature() -> f64 {
    0.2
}

fn default_queue_size() -> i64 {
    65536
}

impl Default for ModelConfig {
    /// The official LEWEL_B (EMAN) ResNet-50 model of `scripts/srun_lewelb_eman.sh`.
    fn default() -> Self {
        ModelConfig {
            method: Method::LewelB,
            arch: Arch::Resnet50,
            stem: Stem::Imagenet,
            width: 64,
            proj_dim: 256,
            hidden_dim: 4096,
            groups: 4,
            map_scale: 1.0,
            alpha: 0.5,
            ema: EmaMode::Eman,
            bn_splits: 1,
            sync_bn: false,
            temperature: default_temperature(),
            queue_size: default_queue_size(),
        }
    }
}

impl ModelConfig {
    /// Channels of the backbone's output feature map (2048 for a standard ResNet-50, 512 for ResNet-18/34).
    pub fn feature_dim(&self) -> i64 {
        resnet::out_channels(self.arch, self.width)
    }

    /// Checks the values that the shapes depend on; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), crate::LewelError> {
        let bad = |m: String| Err(crate::LewelError::Usage(m));
        if self.width <= 0 || self.proj_dim <= 0 || self.hidden_dim <= 0 || self.groups <= 0 || self.bn_splits <= 0 {
            return bad(format!(
                "model sizes must be positive (width {}, proj_dim {}, hidden_dim {}, groups {}, bn_splits {})",
                self.width, self.proj_dim, self.hidden_dim, self.groups, self.bn_splits
            ));
        }
        if self.sync_bn && self.bn_splits != 1 {
            return bad(format!(
                "--sync-bn normalises over the whole batch; it cannot go with --bn-splits {} (drop one of them)",
                self.bn_splits
            ));
        }
        if self.method.has_aligned() {
            if self.proj_dim % self.groups != 0 {
                return bad(format!("proj_dim {} must be a multiple of groups {}", self.proj_dim, self.groups));
            }
            if self.feature_dim() % self.groups != 0 {
                return bad(format!(
                    "the backbone's {} output channels must be a multiple of groups {}; pick another width or groups",
                    self.feature_dim(),
                    self.groups
                ));
            }
        }
        if !(self.map_scale > 0.0 && self.map_scale.is_finite()) {
            return bad(format!("map_scale must be a positive number, got {}", self.map_scale));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha (weight of the global loss) must lie in [0, 1], got {}", self.alpha));
        }
        if self.method.contrastive() {
            if !(self.temperature > 0.0 && self.temperature.is_finite()) {
                return bad(format!("--temperature must be a positive number, got {}", self.temperature));
            }
            if self.queue_size <= 0 {
                return bad(format!("--queue-size must be positive, got {}", self.queue_size));
            }
        }
        Ok(())
    }
}

/// One entry of a module's state: its full official name, the tensor (a shallow clone of the `VarStore`
/// variable) and whether it is a parameter (`true`) or a buffer (running stats, `num_batches_tracked`).
#[derive(Debug)]
pub struct StateEntry {
    pub name: String,
    pub tensor: Tensor,
    pub is_param: bool,
}

impl StateEntry {
    pub(crate) fn new(prefix: &str, name: &str, tensor: &Tensor, is_param: bool) -> Self {
        StateEntry { name: join(prefix, name), tensor: tensor.shallow_clone(), is_param }
    }
}

/// `prefix.name`, or `name` for an empty prefix.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A normal-distributed initial tensor with standard deviation `std`, in the kind and on the device of `p`.
pub(crate) fn randn_init(p: &tch::nn::Path, dims: &[i64], std: f64) -> Result<Tensor, tch::TchError> {
    Ok(Tensor::f_randn(dims, (p.kind(), p.device()))? * std)
}
