//! How the services use memory.

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`); call it first thing in
/// `main`. It applies to every page fault after it, including in memory mapped before.
///
/// Why (issue 24): mimalloc, the global allocator of the broker, the allocator and the agent, asks for huge
/// pages on its arenas (`madvise(MADV_HUGEPAGE)`) and gives pages it has freed back to the kernel after a short
/// delay (`purge_delay`). Each time it touches such a page again, the kernel faults in a whole 2 MiB page and
/// zeroes it. Profiled on the broker during a batch of short tasks, that was 22% of its CPU (`clear_page_erms`
/// under `do_huge_pmd_anonymous_page`, called from `mi_page_free_list_extend`). Without huge pages a fault
/// zeroes 4 KiB. The services' heaps are small enough that huge pages gain them little in TLB misses.
/// A kernel that does not know the call leaves things as they were: the error is ignored.
///
/// mimalloc is also built without its `madvise(MADV_HUGEPAGE)` calls (its `no_thp` feature, in the workspace's
/// `Cargo.toml`), which covers the agent too where the kernel gives huge pages only on request
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, Debian's default); this call also covers
/// kernels set to `always`.
///
/// Children inherit the setting, across `execve` too: not for a process that starts others' programs (the
/// agent starts tasks and executors, which must get the node's own memory settings).
pub fn no_huge_pages() {
    let _ = nix::sys::prctl::set_thp_disable(true);
}
