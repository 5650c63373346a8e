//! `allot-offer-broker`: see the library crate.
use anyhow::Context;

// Every ACCEPT, status update and acknowledgement makes and drops task records, IDs and protobuf
// buffers: mimalloc keeps them off the system allocator's slow paths (glibc malloc/free was ~12% of the broker's
// CPU at 5,000 tasks/s; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: allot_offer_broker::Config = allot_common::config::parse();
    let _telemetry = allot_telemetry::init("allot-offer-broker", env!("CARGO_PKG_VERSION"));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    allot_offer_broker::run(config, listener, allot_common::shutdown::signal()).await?;
    Ok(())
}
