//! `allot-registry`: see the library crate.

fn main() -> anyhow::Result<()> {
    let config: allot_registry::Config = allot_server::config::parse();
    let (runtime, listen) = (config.runtime.clone(), config.listen.clone());
    runtime
        .run_service("allot-registry", env!("CARGO_PKG_VERSION"), &listen, |l| {
            allot_registry::run(config, l, allot_server::shutdown::signal())
        })
        .map_err(anyhow::Error::from_boxed)
}
