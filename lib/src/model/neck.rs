//! The LEWEL coupled head: global embedding, alignment maps, aligned representations (and the BYOL / MoCo neck).
//!
//! Part of the LEWEL port (<https://arxiv.org/abs/2203.14898>); ports `models/lewel.py:ObjectNeck` exactly as
//! written out in `reference/lewel-official.md` §1.4 and the alignment maps of §8.
//!
//! LEWEL_B: the pooled vector and the h·w pixel vectors go through `proj` in ONE call (its BN statistics run over
//! b·(1+h·w) vectors). Position 0 of the output is the global embedding z_g; the other positions are K heat-maps,
//! L2-normalised over the K channels per pixel, divided by the scale s and soft-maxed over the positions. Group g
//! of the feature channels is pooled with maps g·K/G + j (j < K/G), giving K/G aligned representations of
//! dimension C that `proj_obj` embeds.
//!
//! LEWEL_M uses the same head (the paper describes one head for both variants).
//!
//! BYOL and MoCo v2: `proj` sees the pooled vector alone (BN over b vectors), as in BYOL and MoCo; there is no
//! `proj_obj`.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::{mlp::Mlp1d, StateEntry};
use crate::loss::l2_normalize;

/// `neck.proj` and, for LEWEL_B, `neck.proj_obj`.
#[derive(Debug)]
pub struct Neck {
    pub proj: Mlp1d,
    pub proj_obj: Option<Mlp1d>,
    groups: i64,
    scale: f64,
}

/// What the neck returns for one view.
#[derive(Debug)]
pub struct NeckOut {
    /// Global embedding z_g, `[b, k, 1]`.
    pub global: Tensor,
    /// Aligned embeddings Y, `[b, k, k/g]` (LEWEL_B only).
    pub aligned: Option<Tensor>,
    /// The alignment maps that pooled them, `[b, k, h·w]`, detached (a diagnostic: see [`map_entropy_ratio`]).
    pub maps: Option<Tensor>,
}

/// The mean entropy of alignment maps `[b, k, p]` (each summing to 1 over its p positions) divided by that of a
/// uniform map, ln p: 1 for uniform maps (LEWEL's spatial part has nothing to act on), lower as they focus. 1 when
/// p = 1.
pub fn map_entropy_ratio(maps: &Tensor) -> Result<f64> {
    let p = maps.size().last().copied().unwrap_or(1);
    if p <= 1 {
        return Ok(1.0);
    }
    let m = maps.f_to_kind(Kind::Double)?;
    let h = -(&m * m.f_clamp_min(1e-300)?.f_log()?).f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)?;
    Ok(h.f_mean(Kind::Double)?.f_double_value(&[])? / (p as f64).ln())
}

impl NeckOut {
    /// Both embeddings in float32 (after an autocast forward; float32 ones go through untouched).
    pub fn full_precision(&self) -> Result<NeckOut> {
        Ok(NeckOut {
            global: crate::amp::full_precision(&self.global)?,
            aligned: self.aligned.as_ref().map(crate::amp::full_precision).transpose()?,
            maps: self.maps.as_ref().map(crate::amp::full_precision).transpose()?,
        })
    }
}

impl Neck {
    /// `proj_obj = None` gives the BYOL neck.
    pub fn new(proj: Mlp1d, proj_obj: Option<Mlp1d>, groups: i64, scale: f64) -> Self {
        Neck { proj, proj_obj, groups, scale }
    }

    /// Runs the head on a backbone feature map.
    ///
    /// # Shapes
    /// `f`: `[b, c, h, w]` → global `[b, k, 1]`, aligned `[b, k, k/g]` (LEWEL_B) or `None` (BYOL).
    pub fn forward_t(&self, f: &Tensor, train: bool) -> Result<NeckOut> {
        let (b, c, h, w) = f.size4()?;
        let p = h * w;
        let x = f.f_flatten(2, 3)?; // [b, c, p]
        let xbar = f.f_adaptive_avg_pool2d([1, 1])?.f_flatten(2, 3)?; // [b, c, 1]
        let Some(proj_obj) = &self.proj_obj else {
            return Ok(NeckOut { global: self.proj.forward_t(&xbar, train)?, aligned: None, maps: None });
        };
        let z = self.proj.forward_t(&Tensor::f_cat(&[&xbar, &x], 2)?, train)?; // [b, k, 1+p]
        let k = z.size3()?.1;
        let (g, scale) = (self.groups, self.scale);
        if k % g != 0 || c % g != 0 {
            bail!("LEWEL neck: K = {k} and C = {c} must both be multiples of the {g} groups");
        }
        let parts = z.f_split_with_sizes([1, p], 2)?;
        let (z_g, s) = (&parts[0], &parts[1]); // [b, k, 1], [b, k, p]
        let s = l2_normalize(s, 1)? / scale; // per pixel over all K channels, then 1/s
        let a = s.f_softmax(2, None::<Kind>)?; // [b, k, p], softmax over positions
        let a = a.f_view([b, g, k / g, p])?; // [b, g, k/g, p]
        let xg = x.f_view([b, g, c / g, p])?; // [b, g, c/g, p]
        let r = xg.f_matmul(&a.f_transpose(3, 2)?)?; // [b, g, c/g, k/g]
        let r = r.f_view([b, c, k / g])?; // [b, c, k/g]: k/g aligned representations of dim c
        let y = proj_obj.forward_t(&r, train)?; // [b, k, k/g]
        Ok(NeckOut { global: z_g.shallow_clone(), aligned: Some(y), maps: Some(a.f_view([b, k, p])?.f_detach()?) })
    }

    /// The alignment maps of §8: softmax over positions of the L2-normalised (and 1/s scaled) heat-maps.
    ///
    /// # Shapes
    /// `f`: `[b, c, h, w]` → `[b, k, h, w]`; each map sums to 1 over its h·w positions.
    pub fn alignment_maps(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        if self.proj_obj.is_none() {
            bail!("a model without the aligned branch (byol, mocov2) has no alignment maps; use lewel-b or lewel-m");
        }
        let (b, _, h, w) = f.size4()?;
        let x = f.f_flatten(2, 3)?; // [b, c, p]
        let xbar = f.f_adaptive_avg_pool2d([1, 1])?.f_flatten(2, 3)?; // [b, c, 1]
        let z = self.proj.forward_t(&Tensor::f_cat(&[&xbar, &x], 2)?, train)?; // [b, k, 1+p]
        let k = z.size3()?.1;
        let s = z.f_narrow(2, 1, h * w)?; // [b, k, p]
        let a = (l2_normalize(&s, 1)? / self.scale).f_softmax(2, None::<Kind>)?;
        Ok(a.f_view([b, k, h, w])?)
    }

    /// `prefix.proj.mlp.*` then `prefix.proj_obj.mlp.*`.
    pub fn state(&self, prefix: &str, out: &mut Vec<StateEntry>) {
        self.proj.state(&super::join(prefix, "proj"), out);
        if let Some(po) = &self.proj_obj {
            po.state(&super::join(prefix, "proj_obj"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn neck(vs: &VarStore, c: i64, k: i64, lewel: bool) -> Neck {
        let p = vs.root();
        let proj = Mlp1d::new(&p.sub("proj"), c, 8, k, 1, true).unwrap();
        let po = lewel.then(|| Mlp1d::new(&p.sub("proj_obj"), c, 8, k, 1, true).unwrap());
        Neck::new(proj, po, 2, 1.0)
    }

    #[test]
    fn grouping_follows_the_reference_indexing() {
        tch::manual_seed(1);
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let (b, c, k, h, w) = (2, 6, 4, 2, 3);
        let n = neck(&vs, c, k, true);
        let f = Tensor::randn([b, c, h, w], (Kind::Double, Device::Cpu));
        let out = n.forward_t(&f, true).unwrap();
        assert_eq!(out.global.size(), [b, k, 1]);
        let y = out.aligned.unwrap();
        assert_eq!(y.size(), [b, k, k / 2]);
        // recompute R index by index (§1.4) with the maps of the same BN batch, and compare proj_obj(R) with Y
        let x = f.flatten(2, 3);
        let z = Tensor::cat(&[f.mean_dim(&[2i64, 3][..], false, Kind::Double).unsqueeze(2), x.shallow_clone()], 2);
        let zz = n.proj.forward_t(&z, true).unwrap();
        let s = zz.narrow(2, 1, h * w);
        let a = (&s / s.norm_scalaropt_dim(2, [1], true)).softmax(2, Kind::Double); // [b, k, p]
        let (g, cg, kg) = (2, c / 2, k / 2);
        let r = Tensor::zeros([b, c, kg], (Kind::Double, Device::Cpu));
        for bi in 0..b {
            for gi in 0..g {
                for ci in 0..cg {
                    for j in 0..kg {
                        let ch = gi * cg + ci;
                        let v = (x.get(bi).get(ch) * a.get(bi).get(gi * kg + j)).sum(Kind::Double);
                        r.get(bi).get(ch).get(j).copy_(&v);
                    }
                }
            }
        }
        let y2 = n.proj_obj.as_ref().unwrap().forward_t(&r, true).unwrap();
        assert!(y.allclose(&y2, 1e-10, 1e-12, false));
        // maps: [b, k, h, w], each sums to 1, logits in [-1, 1] so the max/min ratio is at most e^2
        let maps = n.alignment_maps(&f, false).unwrap();
        assert_eq!(maps.size(), [b, k, h, w]);
        let sums = maps.sum_dim_intlist(&[2i64, 3][..], false, Kind::Double);
        assert!(sums.allclose(&sums.ones_like(), 1e-12, 1e-12, false));
        let flat = maps.flatten(2, 3);
        let ratio = (flat.amax([2], false) / flat.amin([2], false)).max().double_value(&[]);
        assert!(ratio <= (2.0f64).exp() + 1e-9);
    }

    #[test]
    fn map_entropy_ratio_of_uniform_one_hot_and_half_maps() {
        let uniform = Tensor::full([2, 3, 16], 1.0 / 16.0, (Kind::Float, tch::Device::Cpu));
        assert!((map_entropy_ratio(&uniform).unwrap() - 1.0).abs() < 1e-6);
        let one_hot = Tensor::zeros([2, 3, 16], (Kind::Float, tch::Device::Cpu));
        let _ = one_hot.narrow(2, 5, 1).fill_(1.0);
        assert!(map_entropy_ratio(&one_hot).unwrap().abs() < 1e-12);
        // half of the maps uniform over 4 of 16 positions (entropy ln 4 = ln 16 / 2), half one-hot: mean 1/4
        let m = Tensor::zeros([1, 2, 16], (Kind::Double, tch::Device::Cpu));
        let _ = m.narrow(1, 0, 1).narrow(2, 0, 4).fill_(0.25);
        let _ = m.narrow(1, 1, 1).narrow(2, 7, 1).fill_(1.0);
        assert!((map_entropy_ratio(&m).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(map_entropy_ratio(&Tensor::ones([2, 3, 1], (Kind::Float, tch::Device::Cpu))).unwrap(), 1.0);
    }

    #[test]
    fn byol_neck_sees_only_the_pooled_vector() {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let n = neck(&vs, 6, 4, false);
        let f = Tensor::randn([3, 6, 2, 2], (Kind::Double, Device::Cpu));
        let out = n.forward_t(&f, true).unwrap();
        assert!(out.aligned.is_none());
        let pooled = f.mean_dim(&[2i64, 3][..], true, Kind::Double).flatten(2, 3);
        let want = n.proj.forward_t(&pooled, true).unwrap();
        assert!(out.global.allclose(&want, 1e-12, 1e-12, false));
        assert!(n.alignment_maps(&f, false).is_err());
        assert!(n.forward_t(&f.flatten(2, 3), true).is_err());
    }
}
