//! How the allocator serves large blocks.

/// Serves allocations of at least `threshold` bytes from mappings of their
/// own, unmapped when freed, whenever the heap has no free block ready for
/// them (glibc's `M_MMAP_THRESHOLD`; the daemon frees no such blocks to the
/// heap, so in practice every one is a mapping). Fixing the
/// threshold also stops glibc from raising it after such a block is freed,
/// which would serve later ones from the heap, where `calloc` clears reused
/// memory (making all of it resident) and freed memory stays with the
/// process. The gateway's per-flow TCP buffers rely on this: pages a flow
/// never touches never become resident, and a closed flow's are returned.
/// Returns whether the allocator took the setting.
pub fn map_large_allocations(threshold: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let t = libc::c_int::try_from(threshold).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's parameters; glibc
        // checks the value and returns 0 if it refuses it.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, t) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = threshold;
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_takes_the_threshold() {
        assert_eq!(
            super::map_large_allocations(256 * 1024),
            cfg!(target_env = "gnu")
        );
        let big = vec![0u8; 4 << 20];
        assert!(big.iter().all(|&b| b == 0));
    }
}
