//! Backbone names: ours (the official LEWEL `state_dict` names) ↔ torchvision's (and timm's) ResNet names,
//! and the architecture a set of torchvision-named tensors describes.
//!
//! Our backbone lives under `online_net.backbone.` in the torchvision v1.5 layout, so the mapping is an exact
//! prefix (`online_net.backbone.layer1.0.conv1.weight` ↔ `layer1.0.conv1.weight`); the official
//! `utils/extract_backbone.py` does the same by substring replacement (`reference/lewel-official.md` §7).
//! timm's `resnet18/34/50` use the same names (`conv1`, `bn1`, `layerN.i.{conv,bn}K`, `downsample.{0,1}`,
//! `fc`), so one file serves both.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::model::{Arch, Stem};

/// The prefix of the online backbone in our (and the official, minus `module.`) names.
pub const ONLINE_BACKBONE: &str = "online_net.backbone.";
/// The prefix of the target backbone.
pub const TARGET_BACKBONE: &str = "target_net.backbone.";

/// The online backbone's entries of a full state, renamed to torchvision names, in the same order.
pub fn backbone_of(state: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    state
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(ONLINE_BACKBONE).map(|n| (n.to_string(), t.shallow_clone())))
        .collect()
}

/// Whether a set of names looks like a bare torchvision ResNet (`conv1.weight`, `layer1.0...`).
pub fn looks_like_resnet<'a>(mut names: impl Iterator<Item = &'a str> + Clone) -> bool {
    names.clone().any(|k| k == "conv1.weight") && names.any(|k| k.starts_with("layer1."))
}

/// Whether a torchvision name belongs to the classifier (`fc.weight`, `fc.bias`), which a backbone has not.
pub fn is_classifier(name: &str) -> bool {
    name.starts_with("fc.")
}

/// The (arch, stem, width) that torchvision-named backbone shapes describe: the stem from `conv1`'s kernel
/// (7×7: ImageNet, 3×3: CIFAR), the width from its output channels, the depth from the blocks per stage and
/// whether they are bottlenecks (`conv3`).
pub fn infer_arch(shapes: &BTreeMap<String, Vec<i64>>) -> Result<(Arch, Stem, i64)> {
    let conv1 = shapes.get("conv1.weight").context("no conv1.weight: not a ResNet backbone")?;
    let &[width, 3, k, k2] = conv1.as_slice() else {
        bail!("conv1.weight has shape {conv1:?}; a ResNet stem on RGB images is [width, 3, k, k]");
    };
    let stem = match (k, k2) {
        (7, 7) => Stem::Imagenet,
        (3, 3) => Stem::Cifar,
        _ => bail!("conv1.weight has a {k}x{k2} kernel; only the 7x7 (ImageNet) and 3x3 (CIFAR) stems are known"),
    };
    let mut blocks = [BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
    for name in shapes.keys() {
        for (s, set) in blocks.iter_mut().enumerate() {
            if let Some(rest) = name.strip_prefix(&format!("layer{}.", s + 1)) {
                if let Some(Ok(i)) = rest.split('.').next().map(str::parse::<usize>) {
                    set.insert(i);
                }
            }
        }
    }
    let counts: Vec<usize> = blocks.iter().map(BTreeSet::len).collect();
    let bottleneck = shapes.contains_key("layer1.0.conv3.weight");
    let arch = match (bottleneck, counts.as_slice()) {
        (false, [2, 2, 2, 2]) => Arch::Resnet18,
        (false, [3, 4, 6, 3]) => Arch::Resnet34,
        (true, [3, 4, 6, 3]) => Arch::Resnet50,
        (true, [3, 4, 23, 3]) => bail!("this is a ResNet-101; only ResNet-18, -34 and -50 are supported"),
        (true, [3, 8, 36, 3]) => bail!("this is a ResNet-152; only ResNet-18, -34 and -50 are supported"),
        _ => bail!(
            "blocks per stage {counts:?} ({}) match no supported ResNet (18: [2,2,2,2], 34: [3,4,6,3], 50: [3,4,6,3] bottleneck)",
            if bottleneck { "bottleneck" } else { "basic" }
        ),
    };
    Ok((arch, stem, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::ResNet;
    use crate::model::StateEntry;
    use tch::{nn::VarStore, Device};

    fn shapes_of(arch: Arch, stem: Stem, width: i64) -> BTreeMap<String, Vec<i64>> {
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), arch, stem, width, 1, true).unwrap();
        let mut st: Vec<StateEntry> = Vec::new();
        net.state("", &mut st);
        st.into_iter().map(|e| (e.name, e.tensor.size())).collect()
    }

    #[test]
    fn infers_every_supported_arch() {
        for (arch, stem, width) in [
            (Arch::Resnet18, Stem::Imagenet, 64),
            (Arch::Resnet18, Stem::Cifar, 4),
            (Arch::Resnet34, Stem::Cifar, 8),
            (Arch::Resnet50, Stem::Imagenet, 16),
        ] {
            assert_eq!(infer_arch(&shapes_of(arch, stem, width)).unwrap(), (arch, stem, width));
        }
        let mut r = shapes_of(Arch::Resnet18, Stem::Cifar, 4);
        r.insert("layer3.2.conv1.weight".into(), vec![16, 16, 3, 3]);
        let err = infer_arch(&r).unwrap_err();
        assert!(format!("{err}").contains("[2, 2, 3, 2]"), "{err}");
    }

    #[test]
    fn names_map_by_exact_prefix() {
        let t = Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
        let state = vec![
            ("online_net.backbone.conv1.weight".to_string(), t.shallow_clone()),
            ("online_net.neck.proj.mlp.0.weight".to_string(), t.shallow_clone()),
            ("target_net.backbone.conv1.weight".to_string(), t.shallow_clone()),
            ("online_net.backbone.layer1.0.downsample.1.num_batches_tracked".to_string(), t.shallow_clone()),
        ];
        let names: Vec<String> = backbone_of(&state).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["conv1.weight", "layer1.0.downsample.1.num_batches_tracked"]);
        assert!(looks_like_resnet(["conv1.weight", "bn1.weight", "layer1.0.conv1.weight"].into_iter()));
        assert!(!looks_like_resnet(["online_net.backbone.conv1.weight"].into_iter()));
        assert!(is_classifier("fc.weight") && !is_classifier("layer1.0.fc_like"));
    }
}
