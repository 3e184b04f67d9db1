//! What a bundle costs on the device: bytes, heap, resident pages, latency.
//!
//! The heap is measured by [`CountingAlloc`], a global allocator wrapper that the binary
//! installs; resident memory comes from /proc/self/status where it exists (reported as
//! unknown elsewhere, never an error) and the factor mapping's residency from mincore.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live and peak heap bytes of the process.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// only statistics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            add(new_size);
        }
        p
    }
}

fn add(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Heap bytes live now and at the peak, when the counting allocator is installed
/// (both stay 0 otherwise).
pub fn heap() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// VmHWM (peak resident) and VmRSS in bytes from /proc/self/status; None where /proc is
/// missing or reads differently.
pub fn proc_rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |key: &str| {
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.trim();
            let kb = rest.strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            Some(kb * 1024)
        })
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resident bytes of this executable's own mappings (code, read-only data, relocated data),
/// from /proc/self/smaps: most of the binary is often resident, since the kernel maps
/// whole 64 KB windows around each code fault. None where /proc is missing.
pub fn binary_resident() -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    smaps_rss_of(&smaps, exe.to_str()?)
}

/// Sum of the `Rss:` lines of the mappings of `path` in smaps text; None if it maps nothing.
fn smaps_rss_of(smaps: &str, path: &str) -> Option<u64> {
    let (mut total, mut found, mut inside) = (0u64, false, false);
    for line in smaps.lines() {
        // a mapping's header: "start-end perms offset dev inode   [path]" (single spaces,
        // then padding before a path that may itself hold spaces); its fields follow
        let mut fields = line.splitn(6, ' ');
        if fields.next().is_some_and(|range| range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-')) {
            inside = fields.nth(4).is_some_and(|p| p.trim_start() == path);
            found |= inside;
        } else if inside {
            if let Some(kb) = line.strip_prefix("Rss:").and_then(|r| r.trim().strip_suffix("kB")).and_then(|v| v.trim().parse::<u64>().ok()) {
                total += kb * 1024;
            }
        }
    }
    found.then_some(total)
}

/// Latency percentiles in milliseconds (nearest rank on the sorted samples).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub runs: usize,
}

pub fn percentiles(ms: &mut [f64]) -> Percentiles {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| if ms.is_empty() { f64::NAN } else { ms[(((ms.len() as f64) * q).ceil() as usize).clamp(1, ms.len()) - 1] };
    Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99), runs: ms.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rss_sums_the_mappings_of_one_file() {
        let smaps = "\
55d4c0000000-55d4c0100000 r--p 00000000 08:01 42 /opt/embslim
Size:               1024 kB
Rss:                 300 kB
55d4c0100000-55d4c0900000 r-xp 00100000 08:01 42 /opt/embslim
Rss:                5000 kB
7f0000000000-7f0000100000 r--p 00000000 08:01 43                         /opt/my bundle/factors.safetensors
Rss:                 700 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                  64 kB
";
        assert_eq!(smaps_rss_of(smaps, "/opt/embslim"), Some(5300 * 1024));
        assert_eq!(smaps_rss_of(smaps, "/opt/my bundle/factors.safetensors"), Some(700 * 1024));
        assert_eq!(smaps_rss_of(smaps, "/opt/other"), None);
    }
}
