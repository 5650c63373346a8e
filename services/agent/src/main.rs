//! `allot-agent`: see the library crate.
use anyhow::Context;

// A simulating agent (`--simulate N`) makes and drops a status update per task state: mimalloc keeps
// them off the system allocator's slow paths (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: allot_agent::Config = allot_common::config::parse();
    let _telemetry = allot_telemetry::init("allot-agent", env!("CARGO_PKG_VERSION"));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    allot_agent::run(config, listener, allot_common::shutdown::signal()).await?;
    Ok(())
}
