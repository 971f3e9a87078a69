//! ResNet-18/34/50 backbones in the torchvision v1.5 layout, returning the last feature map.
//!
//! Part of the LEWEL port (<https://arxiv.org/abs/2203.14898>); ports `backbone/resnet.py` (`resnet50_encoder`
//! with `with_avgpool=False`) as described in `reference/lewel-official.md` §1.2: torchvision parameter names
//! (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `downsample.1.*`), the
//! stride on the 3×3 conv of a bottleneck, kaiming-normal fan_out init of every conv, BN weight 1 / bias 0, no
//! zero-init of the last BN of a block. No average pool, no `fc`.
//!
//! Two additions the official code does not have: a CIFAR stem (3×3 conv stride 1, no max-pool) and a width
//! multiplier (base width 16 / 32 / 64; stage widths w, 2w, 4w, 8w).

use anyhow::{bail, Result};
use tch::{nn::Path, Tensor};

use super::{batchnorm::BatchNorm, join, randn_init, Arch, StateEntry, Stem};

/// A bias-free 2-D convolution with kaiming-normal (fan_out, ReLU) init: std = sqrt(2 / (out·k·k)).
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    fn new(p: &Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, trainable: bool) -> Result<Self> {
        let std = (2.0 / (c_out * k * k) as f64).sqrt();
        let weight = p.add("weight", randn_init(p, &[c_out, c_in, k, k], std)?, trainable);
        Ok(Conv2d { weight, stride, padding })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(&self.weight, None::<&Tensor>, [self.stride; 2], [self.padding; 2], [1, 1], 1)?)
    }
}

/// The shortcut projection `downsample.0` (1×1 conv with the block's stride) and `downsample.1` (BN).
#[derive(Debug)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

/// One residual block: the convs and BNs in order (`conv1`/`bn1`, `conv2`/`bn2`[, `conv3`/`bn3`]).
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
}

impl Block {
    /// torchvision `BasicBlock` (`bottleneck = false`, two 3×3 convs, expansion 1) or `Bottleneck`
    /// (1×1, 3×3 with the stride (v1.5), 1×1 to 4·planes).
    fn new(p: &Path, c_in: i64, planes: i64, stride: i64, bottleneck: bool, splits: i64, train: bool) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        // (c_in, c_out, kernel, stride, padding) of conv1.., torchvision order
        let specs: Vec<(i64, i64, i64, i64, i64)> = if bottleneck {
            vec![(c_in, planes, 1, 1, 0), (planes, planes, 3, stride, 1), (planes, planes * 4, 1, 1, 0)]
        } else {
            vec![(c_in, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
        };
        let mut convs = Vec::with_capacity(specs.len());
        for (i, &(ci, co, k, s, pad)) in specs.iter().enumerate() {
            let conv = Conv2d::new(&p.sub(format!("conv{}", i + 1)), ci, co, k, s, pad, train)?;
            let bn = BatchNorm::new(&p.sub(format!("bn{}", i + 1)), co, splits, train)?;
            convs.push((conv, bn));
        }
        let downsample = if stride != 1 || c_in != planes * expansion {
            let d = p.sub("downsample");
            let conv = Conv2d::new(&d.sub("0"), c_in, planes * expansion, 1, stride, 0, train)?;
            let bn = BatchNorm::new(&d.sub("1"), planes * expansion, splits, train)?;
            Some(Downsample { conv, bn })
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_t(&conv.forward(&h)?, train)?;
            if i != last {
                h = h.f_relu()?;
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.bn.forward_t(&d.conv.forward(x)?, train)?,
            None => x.shallow_clone(),
        };
        Ok((h + identity).f_relu()?)
    }

    fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            out.push(StateEntry::new(&join(prefix, &format!("conv{}", i + 1)), "weight", &conv.weight, true));
            bn.state(&join(prefix, &format!("bn{}", i + 1)), out);
        }
        if let Some(d) = &self.downsample {
            out.push(StateEntry::new(&join(prefix, "downsample.0"), "weight", &d.conv.weight, true));
            d.bn.state(&join(prefix, "downsample.1"), out);
        }
    }
}

/// Blocks per stage and whether they are bottlenecks.
fn layout(arch: Arch) -> ([i64; 4], bool) {
    match arch {
        Arch::Resnet18 => ([2, 2, 2, 2], false),
        Arch::Resnet34 => ([3, 4, 6, 3], false),
        Arch::Resnet50 => ([3, 4, 6, 3], true),
    }
}

/// Channels of the backbone output: 8·width·expansion (2048 for ResNet-50 at width 64, 512 for ResNet-18/34).
pub fn out_channels(arch: Arch, width: i64) -> i64 {
    let (_, bottleneck) = layout(arch);
    8 * width * if bottleneck { 4 } else { 1 }
}

/// A ResNet trunk without average pool and `fc`.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    stem: Stem,
    layers: Vec<Vec<Block>>,
    out_channels: i64,
}

impl ResNet {
    /// Registers every entry under `p` with torchvision names. `width` is the stem / stage-1 width (64 standard).
    pub fn new(p: &Path, arch: Arch, stem: Stem, width: i64, bn_splits: i64, trainable: bool) -> Result<Self> {
        if width <= 0 {
            bail!("ResNet width must be positive, got {width}");
        }
        let conv1 = match stem {
            Stem::Imagenet => Conv2d::new(&p.sub("conv1"), 3, width, 7, 2, 3, trainable)?,
            Stem::Cifar => Conv2d::new(&p.sub("conv1"), 3, width, 3, 1, 1, trainable)?,
        };
        let bn1 = BatchNorm::new(&p.sub("bn1"), width, bn_splits, trainable)?;
        let (blocks, bottleneck) = layout(arch);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = width;
        let mut layers = Vec::with_capacity(4);
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = width << stage;
            let lp = p.sub(format!("layer{}", stage + 1));
            let mut layer = Vec::with_capacity(n as usize);
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                layer.push(Block::new(&lp.sub(j), c_in, planes, stride, bottleneck, bn_splits, trainable)?);
                c_in = planes * expansion;
            }
            layers.push(layer);
        }
        Ok(ResNet { conv1, bn1, stem, layers, out_channels: c_in })
    }

    /// Channels of the output feature map.
    pub fn out_channels(&self) -> i64 {
        self.out_channels
    }

    /// The last feature map (stage 4 output).
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → `[b, c, h/32, w/32]` (ImageNet stem) or `[b, c, h/8, w/8]` (CIFAR stem), c =
    /// [`ResNet::out_channels`]; sizes round up as in torchvision.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_each_stage(x, train, |_| {})
    }

    /// The outputs of stages 1 to 4 (`layer1` .. `layer4`), for dense probes that read an earlier stage.
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]` → four maps, stage s of `[b, width·2^(s-1)·expansion, h/(4·2^(s-1)), ...]` (ImageNet
    /// stem; the CIFAR stem's are 4x larger); the last one is [`ResNet::forward_t`]'s.
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.layers.len());
        let _last = self.forward_each_stage(x, train, |h| out.push(h.shallow_clone()))?; // also out[3]
        Ok(out)
    }

    /// The stem and the four stages, giving each stage's output to `stage` (which may keep it); returns the last.
    fn forward_each_stage(&self, x: &Tensor, train: bool, mut stage: impl FnMut(&Tensor)) -> Result<Tensor> {
        let (_, c, _, _) = x.size4()?;
        if c != 3 {
            bail!("the backbone expects [b, 3, h, w] images, got {:?}", x.size());
        }
        let mut h = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.f_relu()?;
        if self.stem == Stem::Imagenet {
            h = h.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        }
        for layer in &self.layers {
            for block in layer {
                h = block.forward_t(&h, train)?;
            }
            stage(&h);
        }
        Ok(h)
    }

    /// Every entry under `prefix`, in PyTorch's `state_dict` order.
    pub fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        out.push(StateEntry::new(&join(prefix, "conv1"), "weight", &self.conv1.weight, true));
        self.bn1.state(&join(prefix, "bn1"), out);
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, block) in layer.iter().enumerate() {
                block.state(&join(prefix, &format!("layer{}.{j}", i + 1)), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn build(arch: Arch, stem: Stem, width: i64) -> (VarStore, ResNet) {
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), arch, stem, width, 1, true).unwrap();
        (vs, net)
    }

    fn n_params(net: &ResNet) -> i64 {
        let mut st = Vec::new();
        net.state("", &mut st);
        st.iter().filter(|e| e.is_param).map(|e| e.tensor.numel() as i64).sum()
    }

    #[test]
    fn output_shapes_for_every_arch_stem_and_width() {
        let x = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        for (arch, width, stem, want) in [
            (Arch::Resnet18, 64, Stem::Imagenet, [2, 512, 2, 2]),
            (Arch::Resnet18, 16, Stem::Cifar, [2, 128, 8, 8]),
            (Arch::Resnet34, 32, Stem::Imagenet, [2, 256, 2, 2]),
            (Arch::Resnet34, 16, Stem::Cifar, [2, 128, 8, 8]),
            (Arch::Resnet50, 16, Stem::Imagenet, [2, 512, 2, 2]),
            (Arch::Resnet50, 16, Stem::Cifar, [2, 512, 8, 8]),
        ] {
            let (_vs, net) = build(arch, stem, width);
            let y = net.forward_t(&x, true).unwrap();
            assert_eq!(y.size(), want, "{arch:?} {stem:?} {width}");
            assert_eq!(net.out_channels(), want[1]);
            assert_eq!(out_channels(arch, width), want[1]);
        }
    }

    #[test]
    fn resnet50_names_count_and_init() {
        let (vs, net) = build(Arch::Resnet50, Stem::Imagenet, 64);
        assert_eq!(n_params(&net), 23_508_032);
        let vars = vs.variables();
        // torchvision resnet50 state_dict minus fc: 318 keys, 53 BN layers
        assert_eq!(vars.len(), 318);
        assert_eq!(vars.keys().filter(|k| k.ends_with("num_batches_tracked")).count(), 53);
        for k in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight"] {
            assert!(vars.contains_key(k), "{k}");
        }
        assert_eq!(vars["layer2.0.downsample.1.weight"].size(), [512]);
        assert_eq!(vars["layer2.0.conv2.weight"].size(), [128, 128, 3, 3]);
        let mut st = Vec::new();
        net.state("", &mut st);
        assert_eq!(st.len(), 318);
        // kaiming fan_out: layer4.0.conv2 is [512, 512, 3, 3] -> std sqrt(2/4608)
        let std = vars["layer4.0.conv2.weight"].std(true).double_value(&[]);
        assert!((std - (2.0f64 / 4608.0).sqrt()).abs() < 2e-4, "{std}");
        assert_eq!(vars["layer4.2.bn3.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    }

    #[test]
    fn resnet18_and_34_counts() {
        // torchvision resnet18 / resnet34 minus fc (512*1000 + 1000)
        let (_vs, r18) = build(Arch::Resnet18, Stem::Imagenet, 64);
        assert_eq!(n_params(&r18), 11_689_512 - 513_000);
        let (_vs, r34) = build(Arch::Resnet34, Stem::Imagenet, 64);
        assert_eq!(n_params(&r34), 21_797_672 - 513_000);
    }
}
