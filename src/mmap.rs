//! The one place where files are memory-mapped. Parsers take `&[u8]`; this module turns a
//! path into such a slice that lives as long as the returned [`Mapped`].

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A read-only mapping of a whole file, with its path kept for error messages.
#[derive(Debug)]
pub struct Mapped {
    map: Mmap,
    path: PathBuf,
}

impl Mapped {
    /// Map `path` read-only.
    ///
    /// # Safety
    ///
    /// The caller must ensure that no process truncates or rewrites the file while the
    /// mapping is alive: a shrinking file turns reads of the lost pages into SIGBUS and a
    /// rewritten one changes bytes that were already validated. embslim itself never writes
    /// a file in place (every output goes to a temporary file that is renamed over the old
    /// one, which leaves existing mappings of the old inode intact), so mapping its own
    /// bundle files is sound as long as no other program edits them in place.
    pub unsafe fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: forwarded to the caller (see above).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Mapped { map, path: path.to_path_buf() })
    }

    /// Declare random access: page faults then read only the touched page instead of
    /// a readahead window (8 MiB on some kernels), so reading a few rows of a table does
    /// not pull megabytes of it into memory.
    pub fn advise_random(&self) {
        let _ = self.map.advise(memmap2::Advice::Random);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tell the kernel that the given byte range will not be read again soon, so a
    /// streaming pass over a table larger than memory does not keep it resident.
    pub fn release(&self, offset: usize, len: usize) {
        // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops
        // clean pages, which the kernel reads back from the file if they are touched again;
        // no Rust reference can observe a change. Failure only costs memory.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }

    /// Bytes of this mapping that are resident in memory now (mincore), or None where
    /// the platform cannot tell.
    pub fn resident_bytes(&self) -> Option<usize> {
        resident_bytes(&self.map)
    }
}

#[cfg(unix)]
fn resident_bytes(map: &[u8]) -> Option<usize> {
    if map.is_empty() {
        return Some(0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).ok().filter(|p| *p > 0)?;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is exactly the live mapping (page-aligned start, as mmap returns),
    // and `vec` has one byte per page of it, as mincore requires.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let resident = vec.iter().filter(|b| **b & 1 == 1).count();
    Some((resident * page).min(map.len()))
}

#[cfg(not(unix))]
fn resident_bytes(_map: &[u8]) -> Option<usize> {
    None
}
