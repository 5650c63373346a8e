//! `allot-offer-broker`: see the library crate.
use anyhow::Context;

// Every task's launch, status updates and acknowledgements make and drop many small values (protobuf messages,
// IDs, maps' entries): mimalloc keeps them off the system allocator's slow paths, as in the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // It starts no processes, which would inherit this (see the function).
    allot_server::memory::no_huge_pages();
    let config: allot_offer_broker::Config = allot_server::config::parse();
    let runtime = config
        .runtime
        .runtime()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let _telemetry = allot_telemetry::init("allot-offer-broker", env!("CARGO_PKG_VERSION"));
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        allot_offer_broker::run(config, listener, allot_server::shutdown::signal()).await?;
        Ok(())
    })
}
