//! `allot-offer-broker`: see the library crate.
use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: allot_offer_broker::Config = allot_server::config::parse();
    let _telemetry = allot_telemetry::init("allot-offer-broker", env!("CARGO_PKG_VERSION"));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    allot_offer_broker::run(config, listener, allot_server::shutdown::signal()).await?;
    Ok(())
}
