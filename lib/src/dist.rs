//! Data-parallel training over several processes through libtorch's own c10d (`lewel_ffi::dist`): one process per
//! device, ProcessGroupNCCL on CUDA and ProcessGroupGloo on the CPU, joined through a TCPStore.
//!
//! **Launch.** The rendezvous comes from the environment that `torchrun` or Slurm sets ([`Launch::from_env`]):
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (torchrun; its agent hosts the store when it
//! sets `TORCHELASTIC_USE_AGENT_STORE=True`), or `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` with
//! `MASTER_ADDR` (else the first host of `SLURM_JOB_NODELIST` through `scontrol`, or `127.0.0.1` on one node) and
//! `MASTER_PORT` (else 20000 + the job id modulo 20000, so that two jobs on a node do not collide).
//! `scripts/launch-local.sh N TOOL ARGS...` sets the torchrun variables for N processes on this machine.
//!
//! **Semantics** (the same run on 1 or N processes): `--batch-size` is the global batch; rank r takes the r-th
//! contiguous slice of every global batch; each rank's loss is the mean over its slice, and the gradients are
//! averaged over the ranks (so they are those of the global mean loss); BatchNorm statistics are per rank (the
//! official per-GPU BN; `--bn-splits` counts slices of the global batch, so `--bn-splits 8` is the same run on 1,
//! 2, 4 or 8 processes) or, with `--sync-bn`, over the whole global batch (SyncBatchNorm, through
//! [`allreduce_autograd`]); the BN buffers of rank 0 are broadcast before every step, as DistributedDataParallel
//! does; logged losses are means over the ranks; rank 0 alone writes events and checkpoints. A rank that fails or
//! dies makes the others fail at their next collective (a closed connection, or the `--dist-timeout`), with a
//! message naming the cause, never a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Device, Kind, Tensor};

pub use lewel_ffi::dist::has_nccl;

/// The default time a rank waits for the others (rendezvous and every collective), in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// Bytes per gradient bucket (one all-reduce each; DistributedDataParallel's default is 25 MiB).
const BUCKET_BYTES: i64 = 25 << 20;

static RANK: AtomicUsize = AtomicUsize::new(0);
static WORLD: AtomicUsize = AtomicUsize::new(1);

/// This process's rank (0 without a group).
pub fn rank() -> usize {
    RANK.load(Ordering::Relaxed)
}

/// The number of processes (1 without a group).
pub fn world() -> usize {
    WORLD.load(Ordering::Relaxed)
}

/// Whether this process writes the events and checkpoints (rank 0, or the only process).
pub fn is_main() -> bool {
    rank() == 0
}

/// Whether several processes train together.
pub fn active() -> bool {
    world() > 1
}

/// Where this process stands in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Whether rank 0 hosts the store (false under torchrun, whose agent hosts it).
    pub rank0_hosts_store: bool,
    /// Where the values came from (`torchrun` or `slurm`), for messages.
    pub source: &'static str,
    /// The key prefix in the store (torchrun restarts get fresh keys).
    pub prefix: String,
}

impl Launch {
    /// The launch described by the environment, or None for a single process (no variables, or a world of 1).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup (for tests).
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| anyhow!("{k}={v:?} is not a number")),
            }
        };
        let (rank, world, local, source) = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.context("WORLD_SIZE is set but RANK is not (launch with torchrun, or set both)")?;
            (rank, world, num("LOCAL_RANK")?.unwrap_or(rank), "torchrun")
        } else if let Some(world) = num("SLURM_NTASKS")? {
            let rank = num("SLURM_PROCID")?.context("SLURM_NTASKS is set but SLURM_PROCID is not")?;
            (rank, world, num("SLURM_LOCALID")?.unwrap_or(0), "slurm")
        } else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            bail!("rank {rank} is not below the world size {world} ({source} environment)");
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) if !a.is_empty() => a,
            _ if source == "slurm" => slurm_first_host(var)?,
            _ => bail!("WORLD_SIZE={world} but MASTER_ADDR is not set (the address of rank 0's host)"),
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse().map_err(|_| anyhow!("MASTER_PORT={p:?} is not a port number"))?,
            None if source == "slurm" => {
                let job: u64 = var("SLURM_JOB_ID").and_then(|j| j.parse().ok()).unwrap_or(0);
                (20000 + job % 20000) as u16
            }
            None => bail!("WORLD_SIZE={world} but MASTER_PORT is not set"),
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let restart = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
        Ok(Some(Launch {
            rank,
            world,
            local_rank: local,
            master_addr,
            master_port,
            rank0_hosts_store: !agent_store,
            source,
            prefix: format!("lewel/{restart}"),
        }))
    }

    /// The device of this rank for a `--device` choice: CUDA device LOCAL_RANK (or the only visible one) when
    /// the choice is `auto` with CUDA present or any `cuda`; the CPU otherwise.
    pub fn device(&self, spec: crate::cli::DeviceSpec) -> Result<Device> {
        use crate::cli::DeviceSpec;
        spec.load_cuda()?;
        let n = tch::Cuda::device_count() as usize;
        let cuda = match spec {
            DeviceSpec::Cpu => false,
            DeviceSpec::Auto => n > 0,
            DeviceSpec::Cuda(_) => true,
        };
        if !cuda {
            return Ok(Device::Cpu);
        }
        match n {
            0 => Err(crate::LewelError::Usage("--device cuda: libtorch sees no CUDA device".into()).into()),
            1 => Ok(Device::Cuda(0)),
            _ if self.local_rank < n => Ok(Device::Cuda(self.local_rank)),
            _ => bail!("LOCAL_RANK {} but libtorch sees {n} CUDA devices", self.local_rank),
        }
    }
}

/// The first host of `SLURM_JOB_NODELIST` (through `scontrol show hostnames`), or 127.0.0.1 on a single node.
fn slurm_first_host(var: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    if var("SLURM_NNODES").as_deref() == Some("1") {
        return Ok("127.0.0.1".into());
    }
    let list = var("SLURM_JOB_NODELIST")
        .or_else(|| var("SLURM_NODELIST"))
        .context("Slurm launch without MASTER_ADDR nor SLURM_JOB_NODELIST: set MASTER_ADDR to rank 0's host")?;
    let out = std::process::Command::new("scontrol")
        .args(["show", "hostnames", &list])
        .output()
        .context("could not run `scontrol show hostnames` to find rank 0's host; set MASTER_ADDR")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .filter(|h| out.status.success() && !h.is_empty())
        .with_context(|| format!("`scontrol show hostnames {list}` gave no host; set MASTER_ADDR"))
}

/// Joins the process group of `launch` on `device` (NCCL on CUDA, Gloo on the CPU), waiting up to `timeout` for
/// the other ranks. After this, [`rank`], [`world`] and the collectives work.
pub fn init(launch: &Launch, device: Device, timeout: Duration) -> Result<()> {
    let (backend, cuda) = match device {
        Device::Cuda(i) => ("nccl", i),
        _ => ("gloo", 0),
    };
    if backend == "nccl" && !has_nccl() {
        bail!("this build of lewel has no NCCL (its libtorch lacked the headers); train on several GPUs needs it");
    }
    lewel_ffi::dist::init(
        backend,
        &launch.master_addr,
        launch.master_port,
        launch.rank,
        launch.world,
        timeout,
        cuda,
        launch.rank0_hosts_store,
        &launch.prefix,
    )
    .map_err(|e| {
        anyhow!(
            "rank {} of {}: could not join the process group at {}:{} ({backend}, {} environment): {e}",
            launch.rank,
            launch.world,
            launch.master_addr,
            launch.master_port,
            launch.source
        )
    })?;
    RANK.store(launch.rank, Ordering::Relaxed);
    WORLD.store(launch.world, Ordering::Relaxed);
    Ok(())
}

/// Leaves the group (no-op without one).
pub fn shutdown() {
    if active() {
        lewel_ffi::dist::shutdown();
        WORLD.store(1, Ordering::Relaxed);
        RANK.store(0, Ordering::Relaxed);
    }
}

fn lost(e: lewel_ffi::Error) -> anyhow::Error {
    anyhow!(
        "rank {} of {}: a collective failed, so another rank has failed or died (its own error says why): {e}",
        rank(),
        world()
    )
}

/// An error of a backward pass, which runs the gradient all-reduces on several processes: said as a lost rank
/// there (the collective failed), as it is elsewhere.
pub fn backward_error(e: tch::TchError) -> anyhow::Error {
    if active() {
        lost(lewel_ffi::Error(e.to_string()))
    } else {
        e.into()
    }
}

/// Averages `values` over the ranks (identity on one process).
pub fn mean(values: &[f64]) -> Result<Vec<f64>> {
    if !active() {
        return Ok(values.to_vec());
    }
    let t = Tensor::from_slice(values);
    lewel_ffi::dist::allreduce(std::slice::from_ref(&t), true).map_err(lost)?;
    Ok(Vec::<f64>::try_from(&t)?)
}

/// Whether `flag` holds on any rank (identity on one process).
pub fn any(flag: bool) -> Result<bool> {
    if !active() {
        return Ok(flag);
    }
    let t = Tensor::from_slice(&[i64::from(flag)]);
    lewel_ffi::dist::allreduce(std::slice::from_ref(&t), false).map_err(lost)?;
    Ok(t.int64_value(&[0]) > 0)
}

/// Waits for every rank.
pub fn barrier() -> Result<()> {
    if active() {
        lewel_ffi::dist::barrier().map_err(lost)?;
    }
    Ok(())
}

/// Averages the gradients of `params` over the ranks, in buckets of about 25 MiB (one concurrent all-reduce per
/// bucket, flattened; parameters without a gradient are skipped, identically on every rank).
pub fn average_gradients(params: &[Tensor]) -> Result<()> {
    if !active() {
        return Ok(());
    }
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    reduce_in_buckets(&grads, |flat| lewel_ffi::dist::allreduce(flat, true))
}

/// Gradient averaging overlapped with the backward pass (the shim's bucketed reducer: a full 25 MiB bucket
/// starts its all-reduce while autograd goes on with earlier layers).
pub struct GradReducer(lewel_ffi::dist::Reducer);

impl GradReducer {
    /// Hooks the trainable `params`; None on one process.
    pub fn new(params: &[Tensor]) -> Result<Option<GradReducer>> {
        if !active() {
            return Ok(None);
        }
        Ok(Some(GradReducer(lewel_ffi::dist::Reducer::new(params, BUCKET_BYTES as usize).map_err(lost)?)))
    }

    /// Before each backward pass.
    pub fn prepare(&mut self) -> Result<()> {
        self.0.prepare().map_err(lost)
    }

    /// After the backward pass: the averaged gradients are in the parameters' `.grad`.
    pub fn finish(&mut self) -> Result<()> {
        self.0.finish().map_err(lost)
    }
}

/// Copies rank 0's values of `tensors` (buffers or parameters) to every rank, in flattened buckets per kind.
pub fn broadcast_from_main(tensors: &[Tensor]) -> Result<()> {
    if !active() {
        return Ok(());
    }
    let mut by_kind: Vec<(Kind, Device, Vec<Tensor>)> = Vec::new();
    for t in tensors {
        match by_kind.iter_mut().find(|(k, d, _)| *k == t.kind() && *d == t.device()) {
            Some((_, _, v)) => v.push(t.shallow_clone()),
            None => by_kind.push((t.kind(), t.device(), vec![t.shallow_clone()])),
        }
    }
    for (_, _, group) in by_kind {
        reduce_in_buckets(&group, |flat| lewel_ffi::dist::broadcast(flat, 0))?;
    }
    Ok(())
}

/// Runs `op` (in place, over all buckets at once) on the tensors flattened into buckets of one kind, then copies
/// the results back.
fn reduce_in_buckets(tensors: &[Tensor], op: impl FnOnce(&[Tensor]) -> lewel_ffi::Result<()>) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut buckets: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0i64;
    for t in tensors {
        let b = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let same_kind = buckets.last().and_then(|v| v.first()).is_some_and(|f| f.kind() == t.kind());
        if buckets.is_empty() || bytes + b > BUCKET_BYTES || !same_kind {
            buckets.push(Vec::new());
            bytes = 0;
        }
        buckets.last_mut().expect("a bucket").push(t);
        bytes += b;
    }
    let flats: Vec<Tensor> =
        buckets.iter().map(|v| Tensor::cat(&v.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)).collect();
    op(&flats).map_err(lost)?;
    for (v, flat) in buckets.iter().zip(&flats) {
        let mut at = 0i64;
        for t in v {
            let n = t.numel() as i64;
            let mut dst = (*t).shallow_clone();
            dst.copy_(&flat.narrow(0, at, n).view_as(t));
            at += n;
        }
    }
    Ok(())
}

/// The sum of `t` over the ranks, differentiable (SyncBatchNorm's statistics).
pub fn sum_autograd(t: &Tensor) -> Result<Tensor> {
    lewel_ffi::dist::allreduce_autograd(t).map_err(lost)
}

/// The ranks' `t` concatenated along dim 0 (no gradient).
pub fn gather(t: &Tensor) -> Result<Tensor> {
    if !active() {
        return Ok(t.shallow_clone());
    }
    lewel_ffi::dist::allgather(t).map_err(lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn single_process_without_variables_or_world_one() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        assert_eq!(launch(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.master_port), (5, 8, 1, 29500));
        assert_eq!(l.master_addr, "node0");
        assert!(!l.rank0_hosts_store);
        assert_eq!(l.prefix, "lewel/2");
        assert_eq!(l.source, "torchrun");
    }

    #[test]
    fn slurm_variables_and_defaults() {
        let l = launch(&[
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_NNODES", "1"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (3, 4, 3));
        assert_eq!(l.master_addr, "127.0.0.1");
        assert_eq!(l.master_port, 23456);
        assert!(l.rank0_hosts_store);
    }

    #[test]
    fn bad_launch_variables_are_clear_errors() {
        let e = launch(&[("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK"), "{e}");
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not below"), "{e}");
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("MASTER_ADDR"), "{e}");
        let e = launch(&[("WORLD_SIZE", "x")]).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn collectives_are_identities_on_one_process() {
        assert_eq!(mean(&[1.5, 2.0]).unwrap(), [1.5, 2.0]);
        assert!(any(true).unwrap() && !any(false).unwrap());
        let t = Tensor::from_slice(&[1.0f32]);
        assert!(gather(&t).unwrap().equal(&t));
        average_gradients(&[t]).unwrap();
    }
}
