//! gRPC contracts of Weir: `weir.discovery.v1` (control plane → proxies), `weir.identity.v1`
//! (certificates for proxies) and `weir.admin.v1` (weirctl → control plane), plus a client for etcd's v3 API. Versioned packages: a breaking change gets a new `v2` package
//! served alongside the old one.

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("weir.discovery.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("weir.admin.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("weir.identity.v1");
    }
}

/// The subset of etcd's v3 API that weir-control's etcd store speaks (a client only).
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

pub mod codec;
pub mod dial;
