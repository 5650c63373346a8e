//! `allot-agent`: see the library crate.
use anyhow::Context;

// Every task's launch, checkpointed updates and acknowledgements make and drop many small values: mimalloc
// keeps them off the system allocator's slow paths, as in the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread runs every async task (gRPC, the status update manager, the reaper's answers); disk and process
// work goes to tokio's blocking threads. On a multi-threaded runtime each wake-up moved work between threads:
// context switches were about a fifth of the agent's CPU under short tasks (issue 24).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config: allot_agent::Config = allot_server::config::parse();
    let _telemetry = allot_telemetry::init("allot-agent", env!("CARGO_PKG_VERSION"));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    allot_agent::run(config, listener, allot_server::shutdown::signal()).await?;
    Ok(())
}
