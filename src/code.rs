//! The program's own code pages, released once a bundle is loaded (Linux; elsewhere a no-op).
//!
//! The kernel maps a program's code 64 KB around every page that faults in and keeps it
//! mapped, so what only the load runs (the ONNX parser, tract's optimizer, hashing) would
//! stay in the process's resident set for the whole run. After the load the code pages are
//! dropped and inference faults back in only what it runs; cross/build.sh links the
//! functions inference runs next to each other (build.rs, "code order"), so that is little
//! more than they are (measured, x86_64 device build in code order, 100 BBC documents
//! --packed: peak RSS 22.8-24.7 MB without the release, 21.8-22.9 MB with it).

/// Drop the main program's code pages from the process's resident set.
pub fn release() {
    imp::release()
}

#[cfg(target_os = "linux")]
mod imp {
    const DT_NULL: isize = 0;
    const DT_TEXTREL: isize = 22;
    const DT_FLAGS: isize = 30;
    const DF_TEXTREL: usize = 4;

    /// An ELF dynamic entry in the native word size (Elf64_Dyn / Elf32_Dyn).
    #[repr(C)]
    struct Dyn {
        tag: isize,
        val: usize,
    }

    pub fn release() {
        // SAFETY: the callback only reads what dl_iterate_phdr hands it for the duration of
        // the call; the null data pointer is never read.
        unsafe { libc::dl_iterate_phdr(Some(main_program), std::ptr::null_mut()) };
    }

    unsafe extern "C" fn main_program(info: *mut libc::dl_phdr_info, _size: libc::size_t, _data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid dl_phdr_info whose dlpi_phdr points at
        // dlpi_phnum program headers of a loaded object.
        let (base, phdrs) = unsafe {
            let info = &*info;
            (info.dlpi_addr as usize, std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)))
        };
        // code the loader relocated in place (text relocations) lives in private, modified
        // pages: dropping them would bring back the file's unrelocated bytes
        // SAFETY: PT_DYNAMIC gives the address of the object's DT_NULL-terminated dynamic array.
        if phdrs.iter().any(|ph| ph.p_type == libc::PT_DYNAMIC && unsafe { has_text_relocations((base + ph.p_vaddr as usize) as *const Dyn) }) {
            return 1;
        }
        // SAFETY: sysconf has no preconditions.
        let Ok(page) = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) else { return 1 };
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0) {
            let start = (base + ph.p_vaddr as usize) / page * page;
            let end = (base + ph.p_vaddr as usize + ph.p_memsz as usize).next_multiple_of(page);
            // SAFETY: whole pages of the program's own read-only, file-backed code mapping.
            // MADV_DONTNEED unmaps them; unmodified, they fault back in from the file when
            // next run, so no instruction changes. Failure only costs memory.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
        1 // the main program comes first: stop there
    }

    /// # Safety
    ///
    /// `dynamic` must point at a dynamic array terminated by DT_NULL.
    unsafe fn has_text_relocations(mut dynamic: *const Dyn) -> bool {
        loop {
            // SAFETY: within the array until DT_NULL, per the contract.
            let entry = unsafe { &*dynamic };
            match entry.tag {
                DT_NULL => return false,
                DT_TEXTREL => return true,
                DT_FLAGS if entry.val & DF_TEXTREL != 0 => return true,
                _ => {}
            }
            // SAFETY: not past DT_NULL yet.
            dynamic = unsafe { dynamic.add(1) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn release() {}
}
