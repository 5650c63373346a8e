//! Generates Rust types and tonic services for every `allot.*.v1` package under `proto/allot/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "allot/common/v1/common.proto",
        "allot/registry/v1/registry.proto",
        "allot/scheduler/v1/scheduler.proto",
        "allot/allocator/v1/allocator.proto",
        "allot/agent/v1/agent.proto",
        "allot/operator/v1/operator.proto",
        "allot/leader/v1/leader.proto",
    ];
    tonic_prost_build::configure()
        .include_file("allot.rs")
        .compile_protos(&protos, &["."])?;
    Ok(())
}
