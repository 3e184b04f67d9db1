//! Atomic file output: write to a temporary file in the target's directory, sync, rename.
//! A reader (or a crash) sees either the old file or the new one, never a partial one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary path beside `path`, unique to this process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to `path` atomically. Temporary files that killed runs left beside
/// `path` are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(name) = path.file_name() {
        remove_stale(parent_of(path), &name.to_string_lossy(), "tmp");
    }
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| Error::io(path, e))
}

/// Make a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// sha256 (hex) and length of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// sha256 (hex) of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Ask the kernel to drop the page cache of `path` (after hashing it), so that the pages
/// a later memory map shows as resident are the ones inference actually touched.
pub fn drop_page_cache(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a file descriptor we own; advice only, errors ignored.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

/// The directory `path` is in ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Whether process `pid` may still be running. Errs on the side of "alive": only a
/// definite "no such process" counts as dead.
fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else { return true };
        if p <= 0 {
            return true;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let rc = unsafe { libc::kill(p, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Remove `.{name}.{kind}-PID` entries of `dir` whose process is gone: the staging
/// directories and temporary files of runs that were killed mid-write. Best effort:
/// an entry that cannot be removed is left for the next run.
pub fn remove_stale(dir: &Path, name: &str, kind: &str) {
    let prefix = format!(".{name}.{kind}-");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        // file_type does not follow symlinks: a link is removed, never its target
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
    }
}

/// Fail early (before hours of training) when nothing can be written beside `out`:
/// create its parent and a probe file there, then remove the probe.
pub fn check_writable(out: &Path) -> Result<()> {
    let parent = parent_of(out);
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    remove_stale(parent, &name, "probe");
    let probe = parent.join(format!(".{name}.probe-{}", std::process::id()));
    File::create(&probe).map_err(|e| Error::io(parent, e))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// A fresh staging directory beside `out` (same file system, so it can be renamed over it).
/// Staging directories of killed runs (their process is gone) are removed first.
pub fn stage_dir(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into());
    let parent = parent_of(out);
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    remove_stale(parent, &name, "staging");
    let tmp = parent.join(format!(".{name}.staging-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Write a new file inside a staging directory, synced to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    (|| {
        let mut f = File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    })()
    .map_err(|e| Error::io(path, e))
}

/// Replace the directory `out` by the staged directory `staged` in one step: readers see
/// the old bundle or the new one, never a mix. On Linux the two are exchanged with
/// renameat2(RENAME_EXCHANGE); elsewhere the old one is moved aside first.
pub fn publish_dir(staged: &Path, out: &Path) -> Result<()> {
    File::open(staged).and_then(|d| d.sync_all()).map_err(|e| Error::io(staged, e))?;
    if !out.exists() {
        fs::rename(staged, out).map_err(|e| Error::io(out, e))?;
    } else {
        if !out.is_dir() {
            return Err(Error::io(out, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a directory")));
        }
        exchange(staged, out).map_err(|e| Error::io(out, e))?;
        // `staged` now holds the old bundle
        fs::remove_dir_all(staged).map_err(|e| Error::io(staged, e))?;
    }
    sync_dir(out).map_err(|e| Error::io(out, e))
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    const RENAME_EXCHANGE: libc::c_uint = 2;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let old = b.with_extension("old");
    fs::rename(b, &old)?;
    fs::rename(a, b)?;
    fs::rename(&old, a)
}
