//! The C allocator's policy while a bundle loads (glibc only; elsewhere a no-op).
//!
//! glibc serves blocks over its mmap threshold with mmap, which returns them to the system
//! when freed, and raises that threshold to the size of each such block freed, after which
//! large blocks come from the brk heap, where freed memory stays resident. tract's load
//! allocates and frees weight-sized blocks, so under the dynamic threshold the heap's
//! resident pages outgrow its live bytes (measured: peak RSS 33.5 MB against 29.4 MB with
//! the threshold fixed, int4 all-MiniLM-L6-v2 packed). A threshold fixed for the whole run
//! would also send every activation through mmap, paying fresh pages on each inference
//! (+20 % latency measured); so it is fixed low for the load only, then set high, where
//! activations are reused from the heap.

/// Blocks this large or larger are mmapped during the load: glibc's own default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const LOAD_MMAP_THRESHOLD: libc::c_int = 128 << 10;
/// After the load: glibc's ceiling for a dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RUN_MMAP_THRESHOLD: libc::c_int = if cfg!(target_pointer_width = "64") { 32 << 20 } else { 512 << 10 };

/// Run `load` with large blocks mmapped, then let them come from the heap and stay there.
pub fn loading<T>(load: impl FnOnce() -> T) -> T {
    set_mmap_threshold(true);
    let out = load();
    set_mmap_threshold(false);
    out
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mmap_threshold(loading: bool) {
    // SAFETY: mallopt only changes glibc's allocation policy, for blocks allocated from now
    // on; it is thread-safe and fails (returning 0, ignored: only memory is at stake) on a
    // value glibc does not accept.
    unsafe {
        let mmap = if loading { LOAD_MMAP_THRESHOLD } else { RUN_MMAP_THRESHOLD };
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        // fixing one threshold stops glibc adjusting the other, the size of free memory at
        // the heap's top it keeps instead of returning: twice the mmap threshold, as glibc's
        // dynamic rule keeps it, so activations freed after a run are reused, not re-faulted
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * mmap);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_loading: bool) {}
