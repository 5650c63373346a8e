//! `allot-offer-broker`: see the library crate.

// Every task's launch, status updates and acknowledgements make and drop many small values (protobuf messages,
// IDs, maps' entries): mimalloc keeps them off the system allocator's slow paths, as in the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // It starts no processes, which would inherit this (see the function).
    allot_server::memory::no_huge_pages();
    let config: allot_offer_broker::Config = allot_server::config::parse();
    let (runtime, listen) = (config.runtime.clone(), config.listen.clone());
    runtime
        .run_service(
            "allot-offer-broker",
            env!("CARGO_PKG_VERSION"),
            &listen,
            |l| allot_offer_broker::run(config, l, allot_server::shutdown::signal()),
        )
        .map_err(anyhow::Error::from_boxed)
}
