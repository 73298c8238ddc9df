//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler), so
//! no `protoc` binary is needed on a fresh machine.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "silt/common/v1/common.proto",
    "silt/identity/v1/identity.proto",
    "silt/storage/v1/storage.proto",
    "silt/dht/v1/dht.proto",
    "silt/mailbox/v1/mailbox.proto",
    "silt/peer/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    // Services are generated only with the `grpc` feature, so the messages can
    // be used without tonic.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .codec_path("crate::codec::StrictCodec")
        // Fragment payloads decode as `Bytes` views of the receive buffer
        // rather than copies: each byte of a fragment is copied once less.
        .bytes(".silt.storage.v1.PutFragmentRequest.chunk")
        .bytes(".silt.storage.v1.GetFragmentResponse.chunk")
        .bytes(".silt.storage.v1.InlineFragment.data")
        .compile_fds(fds)?;
    Ok(())
}
