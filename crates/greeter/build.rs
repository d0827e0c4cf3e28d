//! Compiles `proto/greeter.proto` with protox (pure Rust), as roster-proto
//! does, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/greeter.proto";
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={file}");
    Ok(())
}
