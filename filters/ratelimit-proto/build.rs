//! Compiles the hand-written Envoy rate-limit protos with protox (a pure-Rust protobuf
//! compiler: no protoc download) and generates prost messages into OUT_DIR.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "envoy/service/ratelimit/v3/rls.proto",
    "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/type/v3/ratelimit_unit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    // protox resolves google/protobuf/*.proto from its built-in copies.
    let descriptors = protox::compile(PROTOS, [&root])?;
    let mut config = prost_build::Config::new();
    // Service stubs are tonic's business (services/ratelimit); this crate only has messages.
    config.service_generator(Box::new(NoServices));
    config.compile_fds(descriptors)?;
    Ok(())
}

struct NoServices;

impl prost_build::ServiceGenerator for NoServices {
    fn generate(&mut self, _service: prost_build::Service, _buf: &mut String) {}
}
