//! gRPC stubs for envoy.service.ratelimit.v3.RateLimitService. protox compiles the proto
//! crate's hand-written files (no protoc); the messages themselves are not generated again
//! but reused from tollgate-ratelimit-proto through extern paths.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../filters/ratelimit-proto/proto");
    let rls = "envoy/service/ratelimit/v3/rls.proto";
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile([rls], [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".envoy", "::tollgate_ratelimit_proto::envoy")
        .compile_fds(descriptors)?;
    Ok(())
}
