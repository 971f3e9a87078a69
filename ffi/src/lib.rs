//! Safe wrappers over `cpp/shim.cpp`: the libtorch C++ entry points that tch does not wrap.
//!
//! - [`dist`], one c10d process group per process (Gloo on CPU, NCCL on CUDA), joined through a TCPStore, with the
//!   collectives data-parallel training needs, including an all-reduce autograd differentiates (SyncBatchNorm);
//! - [`amp`], autocast on the CPU or CUDA (tch's own `autocast` only toggles CUDA) and GradScaler's unscale kernel;
//! - [`to_memory_format`], for channels-last.
//!
//! Tensors cross the boundary as `at::Tensor*` (tch's `C_tensor`); the C++ side never keeps them.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::time::Duration;

use tch::{Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn lewel_shim_last_error() -> *const c_char;
    fn lewel_shim_has_nccl() -> c_int;
    fn lewel_dist_init(
        backend: *const c_char,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        cuda_device: c_int,
        rank0_hosts: c_int,
        prefix: *const c_char,
    ) -> c_int;
    fn lewel_cuda_load() -> c_int;
    fn lewel_dist_allreduce(tensors: *const *mut C_tensor, n: c_int, average: c_int) -> c_int;
    fn lewel_dist_broadcast(tensors: *const *mut C_tensor, n: c_int, root: c_int) -> c_int;
    fn lewel_dist_allgather(input: *mut C_tensor, out: *mut *mut C_tensor) -> c_int;
    fn lewel_dist_allreduce_autograd(input: *mut C_tensor, out: *mut *mut C_tensor) -> c_int;
    fn lewel_dist_barrier() -> c_int;
    fn lewel_reducer_new(params: *const *mut C_tensor, n: c_int, bucket_bytes: i64, out: *mut *mut c_void) -> c_int;
    fn lewel_reducer_prepare(r: *mut c_void) -> c_int;
    fn lewel_reducer_finish(r: *mut c_void) -> c_int;
    fn lewel_reducer_free(r: *mut c_void);
    fn lewel_dist_shutdown();
    fn lewel_autocast_enter(device: c_int, dtype: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int) -> c_int;
    fn lewel_autocast_exit(device: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
    fn lewel_amp_unscale(grads: *const *mut C_tensor, n: c_int, found_inf: *mut C_tensor, inv: *mut C_tensor) -> c_int;
    fn lewel_foreach_mul_scalar_(a: *const *mut C_tensor, n: c_int, s: f64) -> c_int;
    fn lewel_foreach_mul_scalars_(a: *const *mut C_tensor, n: c_int, s: *const f64) -> c_int;
    fn lewel_foreach_mul_scalars(a: *const *mut C_tensor, n: c_int, s: *const f64, out: *mut *mut C_tensor) -> c_int;
    fn lewel_foreach_add_(a: *const *mut C_tensor, b: *const *mut C_tensor, n: c_int, alpha: f64) -> c_int;
    fn lewel_foreach_add(
        a: *const *mut C_tensor,
        b: *const *mut C_tensor,
        n: c_int,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> c_int;
    fn lewel_foreach_norms(a: *const *mut C_tensor, n: c_int, out: *mut *mut C_tensor) -> c_int;
    fn lewel_memory_format(input: *mut C_tensor, channels_last: c_int, out: *mut *mut C_tensor) -> c_int;
    fn lewel_is_channels_last(input: *mut C_tensor) -> c_int;
}

/// A C++ exception from libtorch, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // libtorch messages carry a C++ backtrace after the first lines; keep the message part.
        let msg = self.0.split("\nException raised from").next().unwrap_or(&self.0);
        f.write_str(msg.trim_end())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn check(rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer into its thread-local error string, valid until the next failing call.
    let msg = unsafe { CStr::from_ptr(lewel_shim_last_error()) };
    Err(Error(msg.to_string_lossy().into_owned()))
}

fn ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

fn ptrs(ts: &[Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(ptr).collect()
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error(format!("{s:?} holds a NUL byte")))
}

fn count(n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| Error(format!("too many tensors: {n}")))
}

/// Tensor from a pointer the shim allocated.
///
/// # Safety
/// `p` must be a fresh `at::Tensor*` from the shim (ownership passes to the returned tensor).
unsafe fn owned(p: *mut C_tensor) -> Tensor {
    // SAFETY: guaranteed by the caller.
    unsafe { Tensor::from_ptr(p) }
}

/// CUDA on demand: the binaries do not link libtorch_cuda (a CPU-only run would pay about 0.35 s and 350 MB at
/// start for cuDNN, cuBLAS and NCCL); [`cuda::load`] opens it.
pub mod cuda {
    use super::*;

    /// Opens libtorch_cuda.so (once; through the binary's rpath or `LD_LIBRARY_PATH`), after which libtorch sees
    /// the CUDA devices. Call it before anything asks libtorch about CUDA (device counts, seeds, tensors):
    /// libtorch caches the answer of its first question.
    pub fn load() -> Result<()> {
        // SAFETY: no arguments; idempotent.
        check(unsafe { lewel_cuda_load() })
    }

    /// Whether this machine may have an NVIDIA GPU (its driver's device node), without loading anything.
    pub fn driver_present() -> bool {
        std::path::Path::new("/dev/nvidiactl").exists() || std::path::Path::new("/proc/driver/nvidia/version").exists()
    }
}

/// One c10d process group per process.
pub mod dist {
    use super::*;

    /// Whether this build can make NCCL process groups (CUDA); Gloo is always there.
    pub fn has_nccl() -> bool {
        // SAFETY: no arguments, no state.
        unsafe { lewel_shim_has_nccl() != 0 }
    }

    /// Joins the group: every rank connects to the TCPStore at `addr:port`, which rank 0 hosts when
    /// `rank0_hosts` (else someone else does, as torchrun's agent), waiting up to `timeout`, which also bounds every
    /// collective; the group's keys go under `prefix`. `backend`: `"gloo"` or `"nccl"` (bound to CUDA device
    /// `cuda_device`).
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        backend: &str,
        addr: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
        cuda_device: usize,
        rank0_hosts: bool,
        prefix: &str,
    ) -> Result<()> {
        let (b, a, p) = (cstring(backend)?, cstring(addr)?, cstring(prefix)?);
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let (rank, world, dev) = (count(rank)?, count(world)?, count(cuda_device)?);
        // SAFETY: valid C strings that outlive the call; integers by value.
        check(unsafe {
            lewel_dist_init(b.as_ptr(), a.as_ptr(), port.into(), rank, world, ms, dev, rank0_hosts.into(), p.as_ptr())
        })
    }

    /// Sums each tensor in place over the ranks (`average`: then divides by the world size). The tensors must be
    /// dense and contiguous; the reductions run concurrently.
    pub fn allreduce(tensors: &[Tensor], average: bool) -> Result<()> {
        let p = ptrs(tensors);
        // SAFETY: the pointers are live tensors borrowed for the call.
        check(unsafe { lewel_dist_allreduce(p.as_ptr(), count(p.len())?, average.into()) })
    }

    /// Copies rank `root`'s values into each tensor, in place, on every rank.
    pub fn broadcast(tensors: &[Tensor], root: usize) -> Result<()> {
        let p = ptrs(tensors);
        // SAFETY: as above.
        check(unsafe { lewel_dist_broadcast(p.as_ptr(), count(p.len())?, count(root)?) })
    }

    /// The ranks' `t` concatenated along dim 0, in rank order (no gradient).
    pub fn allgather(t: &Tensor) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `t` is live for the call; on success `out` is a fresh tensor we now own.
        check(unsafe { lewel_dist_allgather(ptr(t), &mut out) })?;
        Ok(unsafe { owned(out) })
    }

    /// The sum of `t` over the ranks, differentiable: its backward sums the incoming gradients over the ranks (so
    /// every rank's loss reaches every rank's inputs, as SyncBatchNorm needs).
    pub fn allreduce_autograd(t: &Tensor) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: as for allgather.
        check(unsafe { lewel_dist_allreduce_autograd(ptr(t), &mut out) })?;
        Ok(unsafe { owned(out) })
    }

    /// Averages the gradients of a list of parameters over the ranks while the backward pass runs (a small
    /// DistributedDataParallel reducer): the parameters go into buckets of about `bucket_bytes`, in reverse order;
    /// a hook on each copies its gradient into its bucket when autograd produces it, and a full bucket starts its
    /// all-reduce at once (in bucket order, the same on every rank). [`Reducer::prepare`] before each backward,
    /// [`Reducer::finish`] after it. Dropping it removes the hooks.
    pub struct Reducer {
        raw: *mut c_void,
    }

    impl Reducer {
        /// Hooks `params` (leaf tensors that require grad, all on one device); needs the process group.
        pub fn new(params: &[Tensor], bucket_bytes: usize) -> Result<Reducer> {
            let p = ptrs(params);
            let mut raw = std::ptr::null_mut();
            let bytes = i64::try_from(bucket_bytes).unwrap_or(i64::MAX);
            // SAFETY: live tensors borrowed for the call (the shim keeps its own references to them).
            check(unsafe { lewel_reducer_new(p.as_ptr(), count(p.len())?, bytes, &mut raw) })?;
            Ok(Reducer { raw })
        }

        /// Resets the buckets before a backward pass.
        pub fn prepare(&mut self) -> Result<()> {
            // SAFETY: `raw` is ours until drop.
            check(unsafe { lewel_reducer_prepare(self.raw) })
        }

        /// After the backward pass: starts the buckets still waiting, waits for all, and writes the averages into
        /// the parameters' gradients.
        pub fn finish(&mut self) -> Result<()> {
            // SAFETY: as above.
            check(unsafe { lewel_reducer_finish(self.raw) })
        }
    }

    impl Drop for Reducer {
        fn drop(&mut self) {
            // SAFETY: `raw` came from lewel_reducer_new and is freed once.
            unsafe { lewel_reducer_free(self.raw) }
        }
    }

    /// Waits for every rank.
    pub fn barrier() -> Result<()> {
        // SAFETY: no arguments.
        check(unsafe { lewel_dist_barrier() })
    }

    /// Leaves the group (a no-op without one).
    pub fn shutdown() {
        // SAFETY: no arguments; idempotent.
        unsafe { lewel_dist_shutdown() }
    }
}

/// For tests of collectives: a test function that runs itself as the ranks of a group.
pub mod testing {
    use std::process::Command;

    /// Inside a rank (the variables set by the parent): `Some((rank, port))`, and the caller runs the rank's
    /// body. Otherwise: a free loopback port, then the current test binary again as `world` processes running
    /// only `test` (`--exact`) with `LEWEL_TEST_RANK`, `LEWEL_TEST_PORT`, `OMP_NUM_THREADS=1` and `env`; panics
    /// unless every rank succeeds, and returns None.
    pub fn ranks(test: &str, world: usize, env: &[(&str, String)]) -> Option<(usize, u16)> {
        if let Ok(rank) = std::env::var("LEWEL_TEST_RANK") {
            let port = std::env::var("LEWEL_TEST_PORT").expect("LEWEL_TEST_PORT").parse().expect("a port");
            return Some((rank.parse().expect("a rank"), port));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let exe = std::env::current_exe().unwrap();
        let kids: Vec<_> = (0..world)
            .map(|r| {
                Command::new(&exe)
                    .args(["--exact", test, "--nocapture", "--test-threads", "1"])
                    .env("LEWEL_TEST_RANK", r.to_string())
                    .env("LEWEL_TEST_PORT", port.to_string())
                    .env("OMP_NUM_THREADS", "1")
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (r, k) in kids.into_iter().enumerate() {
            let out = k.wait_with_output().unwrap();
            assert!(out.status.success(), "rank {r} failed: {:?}", out.status);
        }
        None
    }
}

/// Mixed precision: autocast on any device type and GradScaler's unscale.
pub mod amp {
    use super::*;

    /// Autocast is on (for `cuda` or the CPU, in `kind`) while this lives; dropping it restores the previous state.
    #[must_use = "autocast ends when the guard is dropped"]
    pub struct AutocastGuard {
        device: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
    }

    /// Starts autocast to `kind` (`Kind::BFloat16` or `Kind::Half`) on the CUDA (`cuda`) or CPU device type.
    pub fn autocast(cuda: bool, kind: Kind) -> Result<AutocastGuard> {
        let device = c_int::from(cuda);
        // at::ScalarType numbers.
        let dtype = match kind {
            Kind::Half => 5,
            Kind::BFloat16 => 15,
            other => return Err(Error(format!("autocast to {other:?}: only Half and BFloat16"))),
        };
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: out-pointers to locals.
        check(unsafe { lewel_autocast_enter(device, dtype, &mut prev_enabled, &mut prev_dtype) })?;
        Ok(AutocastGuard { device, prev_enabled, prev_dtype })
    }

    impl Drop for AutocastGuard {
        fn drop(&mut self) {
            // SAFETY: integers by value. It cannot fail short of a libtorch bug; nothing to do then.
            let _ = check(unsafe { lewel_autocast_exit(self.device, self.prev_enabled, self.prev_dtype) });
        }
    }

    /// Multiplies every gradient by `inv_scale` (a 1-element float tensor) in place and sets `found_inf` (a
    /// 1-element float tensor, initially 0) to 1 when any of them holds an inf or NaN: libtorch's
    /// `_amp_foreach_non_finite_check_and_unscale_`, the kernel of PyTorch's GradScaler. All tensors on one device.
    pub fn unscale(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
        let p = ptrs(grads);
        // SAFETY: live tensors borrowed for the call.
        check(unsafe { lewel_amp_unscale(p.as_ptr(), count(p.len())?, ptr(found_inf), ptr(inv_scale)) })
    }
}

/// libtorch's multi-tensor kernels (`_foreach_*`): one launch per list instead of one per tensor, which is what
/// keeps an optimiser step over hundreds of small parameters from being bound by kernel launches on a GPU. All
/// tensors of a call on one device; lists of equal length.
pub mod foreach {
    use super::*;

    fn same_len(a: &[Tensor], b: &[Tensor]) -> Result<()> {
        if a.len() == b.len() {
            Ok(())
        } else {
            Err(Error(format!("foreach: lists of {} and {} tensors", a.len(), b.len())))
        }
    }

    /// `a[i] *= s`, in place.
    pub fn mul_scalar_(a: &[Tensor], s: f64) -> Result<()> {
        let p = ptrs(a);
        // SAFETY: live tensors borrowed for the call.
        check(unsafe { lewel_foreach_mul_scalar_(p.as_ptr(), count(p.len())?, s) })
    }

    /// `a[i] *= s[i]`, in place.
    pub fn mul_scalars_(a: &[Tensor], s: &[f64]) -> Result<()> {
        if a.len() != s.len() {
            return Err(Error(format!("foreach: {} tensors and {} scalars", a.len(), s.len())));
        }
        let p = ptrs(a);
        // SAFETY: live tensors and a slice of as many scalars, borrowed for the call.
        check(unsafe { lewel_foreach_mul_scalars_(p.as_ptr(), count(p.len())?, s.as_ptr()) })
    }

    /// `a[i] · s[i]`, as new tensors.
    pub fn mul_scalars(a: &[Tensor], s: &[f64]) -> Result<Vec<Tensor>> {
        if a.len() != s.len() {
            return Err(Error(format!("foreach: {} tensors and {} scalars", a.len(), s.len())));
        }
        let p = ptrs(a);
        let mut out = vec![std::ptr::null_mut(); a.len()];
        // SAFETY: live tensors and as many scalars; on success every `out` slot is a fresh tensor we own.
        check(unsafe { lewel_foreach_mul_scalars(p.as_ptr(), count(p.len())?, s.as_ptr(), out.as_mut_ptr()) })?;
        Ok(out.into_iter().map(|p| unsafe { owned(p) }).collect())
    }

    /// `a[i] += alpha · b[i]`, in place.
    pub fn add_(a: &[Tensor], b: &[Tensor], alpha: f64) -> Result<()> {
        same_len(a, b)?;
        let (pa, pb) = (ptrs(a), ptrs(b));
        // SAFETY: as above.
        check(unsafe { lewel_foreach_add_(pa.as_ptr(), pb.as_ptr(), count(pa.len())?, alpha) })
    }

    /// `a[i] + alpha · b[i]`, as new tensors.
    pub fn add(a: &[Tensor], b: &[Tensor], alpha: f64) -> Result<Vec<Tensor>> {
        same_len(a, b)?;
        let (pa, pb) = (ptrs(a), ptrs(b));
        let mut out = vec![std::ptr::null_mut(); a.len()];
        // SAFETY: as above; on success every `out` slot holds a fresh tensor we now own.
        check(unsafe { lewel_foreach_add(pa.as_ptr(), pb.as_ptr(), count(pa.len())?, alpha, out.as_mut_ptr()) })?;
        Ok(out.into_iter().map(|p| unsafe { owned(p) }).collect())
    }

    /// The L2 norm of every tensor, as one float64 vector.
    pub fn norms(a: &[Tensor]) -> Result<Tensor> {
        let p = ptrs(a);
        let mut out = std::ptr::null_mut();
        // SAFETY: as above; `out` a fresh tensor on success.
        check(unsafe { lewel_foreach_norms(p.as_ptr(), count(p.len())?, &mut out) })?;
        Ok(unsafe { owned(out) })
    }
}

/// `t` in channels-last (NHWC strides) or, with `channels_last = false`, the default contiguous format. 4-D only
/// for channels-last; other tensors come back unchanged.
pub fn to_memory_format(t: &Tensor, channels_last: bool) -> Result<Tensor> {
    if channels_last && t.dim() != 4 {
        return Ok(t.shallow_clone());
    }
    let mut out = std::ptr::null_mut();
    // SAFETY: `t` live for the call; `out` a fresh tensor on success.
    check(unsafe { lewel_memory_format(ptr(t), c_int::from(channels_last), &mut out) })?;
    Ok(unsafe { owned(out) })
}

/// Whether `t` is laid out channels-last.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: `t` live for the call.
    unsafe { lewel_is_channels_last(ptr(t)) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn channels_last_round_trip() {
        let x = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let y = to_memory_format(&x, true).unwrap();
        assert!(is_channels_last(&y) && !is_channels_last(&x));
        assert_eq!(y.stride(), [60, 1, 15, 3]);
        assert!(y.equal(&x));
        let z = to_memory_format(&y, false).unwrap();
        assert_eq!(z.stride(), [60, 20, 5, 1]);
    }

    #[test]
    fn cpu_autocast_runs_matmul_in_bf16_and_restores() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        {
            let _g = amp::autocast(false, Kind::BFloat16).unwrap();
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
        }
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn unscale_finds_inf_and_scales() {
        let g = [Tensor::from_slice(&[2.0f32, 4.0]), Tensor::from_slice(&[f32::INFINITY])];
        let found = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let inv = Tensor::from_slice(&[0.5f32]);
        amp::unscale(&g[..1], &found, &inv).unwrap();
        assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), [1.0, 2.0]);
        assert_eq!(found.double_value(&[0]), 0.0);
        amp::unscale(&g, &found, &inv).unwrap();
        assert_eq!(found.double_value(&[0]), 1.0);
    }

    #[test]
    fn foreach_kernels_equal_their_loops() {
        let a: Vec<Tensor> = (1..4).map(|k| Tensor::arange(k * 3, (Kind::Float, tch::Device::Cpu)) + 1.0).collect();
        let b: Vec<Tensor> = a.iter().map(|t| t * 0.5 - 2.0).collect();
        let want: Vec<Tensor> = a.iter().zip(&b).map(|(x, y)| (x * 3.0 + y * -0.25) * 2.0).collect();
        let norms_want: Vec<f64> = a.iter().map(|t| t.norm().double_value(&[])).collect();
        assert_eq!(Vec::<f64>::try_from(&foreach::norms(&a).unwrap()).unwrap(), norms_want);
        let c = foreach::add(&a, &b, 1.0).unwrap();
        let m = foreach::mul_scalars(&a, &[1.0, 2.0, 3.0]).unwrap();
        assert!(m[1].equal(&(&a[1] * 2.0)) && m[2].equal(&(&a[2] * 3.0)));
        assert!(c[2].equal(&(&a[2] + &b[2])));
        foreach::mul_scalar_(&a, 3.0).unwrap();
        foreach::add_(&a, &b, -0.25).unwrap();
        foreach::mul_scalars_(&a, &[2.0, 2.0, 2.0]).unwrap();
        for (x, y) in a.iter().zip(&want) {
            assert!(x.allclose(y, 1e-6, 1e-6, false));
        }
        assert!(foreach::add_(&a, &b[..2], 1.0).is_err());
        assert!(foreach::mul_scalars_(&a, &[1.0]).is_err());
    }

    #[test]
    fn cuda_loads_on_demand() {
        // After load(), libtorch has its CUDA backend: on a machine without a driver, a CUDA tensor fails for
        // want of the driver, not for want of a CUDA kernel registration.
        cuda::load().unwrap();
        cuda::load().unwrap();
        if !cuda::driver_present() {
            let e = Tensor::f_zeros([1], (Kind::Float, tch::Device::Cuda(0))).unwrap_err().to_string();
            assert!(!e.contains("'CUDA' backend"), "CUDA kernels missing after load: {e}");
        }
    }

    #[test]
    fn collectives_without_a_group_are_errors() {
        let e = dist::allreduce(&[Tensor::ones([2], (Kind::Float, Device::Cpu))], true).unwrap_err();
        assert!(e.to_string().contains("no process group"), "{e}");
    }
}
