//! SIGINT / SIGTERM handling for long-running tools.
//!
//! The first signal sets a flag that the training loop checks after each step: it finishes the
//! step, writes a checkpoint and exits 130. A second SIGINT exits at once (130) without touching any
//! file under a real name: every write is atomic (temp name + rename), so nothing is corrupted.

use std::sync::atomic::{AtomicUsize, Ordering};

static RECEIVED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_sig: libc::c_int) {
    let n = RECEIVED.fetch_add(1, Ordering::SeqCst);
    if n >= 1 {
        // Second signal: leave now. _exit is async-signal-safe; temp files may remain (hidden names).
        unsafe { libc::_exit(130) };
    }
}

/// Installs the handlers for SIGINT and SIGTERM (idempotent).
pub fn install() {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) > 0
}

/// Makes a write past the file-size limit (`ulimit -f`) fail with `EFBIG` instead of killing the
/// process. The kernel sends SIGXFSZ to a process that writes past its limit, and the default action
/// ends it at once, leaving a temp file behind and no message; ignored, the write returns an error that
/// [`crate::fsio`] turns into a clear one, after removing its temp file. Every tool calls this first.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
