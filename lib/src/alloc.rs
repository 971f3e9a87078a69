//! Process-wide allocator settings for the training tools.
//!
//! glibc's malloc returns freed memory to the kernel eagerly (heap trimming) and serves large blocks
//! with fresh `mmap`s whose threshold moves at run time. A training step frees and reallocates the
//! same large activation buffers every step, so by default each step pays again for page faults on
//! memory it just gave back: measured on ResNet-18 w16, 32 px, batch 256 (2-core CPU), 0.93 s per
//! step by default against 0.71 s with the settings below, at the same peak RSS (1.39 GB).
//! PyTorch eager takes 0.80 s for the same step. (`MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_THRESHOLD_`
//! in the environment do the same for any process.)

/// Keeps freed memory in the process (no trimming) and fixes the mmap threshold at 32 MiB, glibc's
/// largest dynamic value. Call once at start-up, before any tensor is allocated. A no-op elsewhere
/// than glibc; returns whether both settings took.
pub fn tune_for_training() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn settings_take() {
        assert!(super::tune_for_training());
    }
}
