//! Compiles Weir's protos with a vendored `protoc`, so a fresh machine needs nothing from apt.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 3] = [
        "proto/weir/discovery/v1/discovery.proto",
        "proto/weir/admin/v1/admin.proto",
        "proto/weir/identity/v1/identity.proto",
    ];
    const ETCD_PROTOS: [&str; 2] = [
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
    ];
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: a build script is single-threaded here; nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let (discovery, others) = PROTOS.split_at(1);
    tonic_prost_build::configure()
        // Shared, not copied: the control plane sends one snapshot to thousands of streams.
        .bytes(".weir.discovery.v1.Document.json")
        .bytes(".weir.discovery.v1.Snapshot.trust_bundle_pem")
        .bytes(".weir.discovery.v1.DeltaResponse.trust_bundle_pem")
        // Small starting buffers: thousands of mostly idle streams (src/codec.rs).
        .codec_path("crate::codec::DiscoveryCodec")
        .compile_protos(discovery, &["proto"])?;
    tonic_prost_build::configure().compile_protos(others, &["proto"])?;
    // etcd's API, for weir-control's etcd store: a client only, etcd is the server.
    for p in ETCD_PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&ETCD_PROTOS, &["proto"])?;
    Ok(())
}
