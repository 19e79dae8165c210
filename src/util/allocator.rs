//! The C allocator's settings for a server that holds large buffers briefly.

/// Large blocks (message parts of 5 MiB, read buffers) are allocated on one thread and freed
/// on another. glibc raises its mmap threshold to the largest block freed, after which such
/// blocks come from its heaps and stay there when freed: the process grows beyond what
/// `max_memory` accounts for. A fixed threshold of 1 MiB hands every block that large back to
/// the system when it is freed (glibc only; elsewhere nothing changes).
pub fn hand_back_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
