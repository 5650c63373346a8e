//! `allot-registry`: see the library crate.
use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let config: allot_registry::Config = allot_server::config::parse();
    let runtime = config
        .runtime
        .runtime()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let _telemetry = allot_telemetry::init("allot-registry", env!("CARGO_PKG_VERSION"));
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        allot_registry::run(config, listener, allot_server::shutdown::signal()).await?;
        Ok(())
    })
}
