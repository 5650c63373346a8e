//! `allot-allocator`: see the library crate.

// Allocation cycles make and drop tens of thousands of small values (offers, grants, IDs): mimalloc keeps
// them off the system allocator's slow paths (docs/benchmarks.md has the figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // It starts no processes, which would inherit this (see the function).
    allot_server::memory::no_huge_pages();
    let config: allot_allocator::Config = allot_server::config::parse();
    let (runtime, listen) = (config.runtime.clone(), config.listen.clone());
    runtime
        .run_service("allot-allocator", env!("CARGO_PKG_VERSION"), &listen, |l| {
            allot_allocator::run(config, l, allot_server::shutdown::signal())
        })
        .map_err(anyhow::Error::from_boxed)
}
