//! Compiles `proto/c1/connector/v2/connector.proto` with protox (pure Rust; no `protoc` needed) and
//! generates prost types with `BTreeMap` maps so that map entries encode in sorted order.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/c1/connector/v2/connector.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .enable_type_names()
        .compile_fds(fds)?;
    Ok(())
}
