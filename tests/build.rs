//! Compiles `proto/echo.proto` with a vendored `protoc`, so a fresh clone builds
//! without a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    // static_chroot builds the static binaries for the same target as the tests.
    if let Ok(target) = std::env::var("TARGET") {
        println!("cargo:rustc-env=WEIR_BUILD_TARGET={target}");
    }
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point; nothing else reads
        // or writes the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    tonic_prost_build::configure().compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
