//! Freed memory back to the kernel between jobs. A run computes hundreds of
//! jobs in one process; each allocator keeps what a job freed for the next
//! allocation, so without this the process's resident memory grows towards
//! the sum of what each stage left behind rather than the largest job's.

use std::sync::atomic::{AtomicU64, Ordering};

/// Resident bytes just after the last release.
static BASE: AtomicU64 = AtomicU64::new(0);

/// Growth since the last release that makes a job's end return memory: a
/// release costs a few milliseconds (page faults when the memory is used
/// again), worth it after a large job, not after each of a hundred small ones.
const WORTH: u64 = 64 << 20;

/// Returns the memory the allocators hold free — mimalloc's (Rust's, the
/// binary's global allocator) and glibc malloc's (ONNX Runtime's) — when
/// the process has grown by [`WORTH`] since the last time.
pub fn release_free() {
    let Some(now) = resident() else { return };
    if now < BASE.load(Ordering::Relaxed) + WORTH {
        return;
    }
    // SAFETY: both calls only walk the allocators' own free lists.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        malloc_trim(0);
    }
    BASE.store(resident().unwrap_or(now), Ordering::Relaxed);
}

/// This process's resident memory now and at its peak (VmRSS, VmHWM) in
/// MiB; NaN where `/proc` has no such lines (not Linux).
pub fn memory_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// This process's resident bytes, where known.
fn resident() -> Option<u64> {
    let mib = memory_mib().0;
    mib.is_finite()
        .then_some((mib * (1u64 << 20) as f64) as u64)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}
