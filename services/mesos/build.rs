//! Compiles `proto/mesos/v1/*.proto` (Mesos' message numbers, the subset Allot carries) into a descriptor set,
//! `$OUT_DIR/mesos.bin`, that `src/protobuf.rs` transcodes through. The Rust types prost also writes are not
//! used.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("mesos.bin"))
        .compile_protos(
            &[
                "../../proto/mesos/v1/mesos.proto",
                "../../proto/mesos/v1/scheduler.proto",
                "../../proto/mesos/v1/executor.proto",
            ],
            &["../../proto"],
        )?;
    Ok(())
}
