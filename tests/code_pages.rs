//! `code::release` (run after every bundle load) takes the program's code pages out of the
//! resident set. Its own test binary, so no other test runs code meanwhile.

/// The address range of this test program's code mapping and its resident bytes (smaps).
#[cfg(target_os = "linux")]
fn code_mapping() -> Option<(usize, usize, usize)> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let exe = exe.to_str()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut current = None;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') {
            // a mapping's first line: range, permissions, offset, device, inode, path
            current = if f[1] == "r-xp" && f.get(5) == Some(&exe) { f[0].split_once('-') } else { None };
        } else if let (Some((start, end)), ["Rss:", kb, "kB"]) = (current, f.as_slice()) {
            let hex = |s| usize::from_str_radix(s, 16).ok();
            return Some((hex(start)?, hex(end)?, kb.parse::<usize>().ok()? * 1024));
        }
    }
    None
}

#[cfg(target_os = "linux")]
#[test]
fn releasing_the_code_unmaps_what_ran() {
    let Some((start, end, _)) = code_mapping() else {
        eprintln!("no /proc/self/smaps: nothing to check here");
        return;
    };
    // fault in every page of the code, as a long load would
    for addr in (start..end).step_by(4096) {
        // SAFETY: inside this process's own readable code mapping, read only.
        unsafe { std::ptr::read_volatile(addr as *const u8) };
    }
    let before = code_mapping().unwrap().2;
    embslim::code::release();
    let after = code_mapping().unwrap().2;
    // what remains is the code run since the release (reading smaps): a few 64 KB windows;
    // without the release everything read above stays (after == before)
    assert!(after * 4 < before, "code resident {before} bytes before the release, {after} after");
}
