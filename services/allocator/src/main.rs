//! `allot-allocator`: see the library crate.
use anyhow::Context;

// Allocation cycles make and drop tens of thousands of small values (offers, grants, IDs): mimalloc keeps
// them off the system allocator's slow paths (docs/benchmarks.md has the figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // It starts no processes, which would inherit this (see the function).
    allot_server::memory::no_huge_pages();
    let config: allot_allocator::Config = allot_server::config::parse();
    let runtime = config
        .runtime
        .runtime()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let _telemetry = allot_telemetry::init("allot-allocator", env!("CARGO_PKG_VERSION"));
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        allot_allocator::run(config, listener, allot_server::shutdown::signal()).await?;
        Ok(())
    })
}
