//! Endpoints: where a service's instances are, their identity and its virtual IPs.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::meta::Metadata;
use crate::wire::{Wire, impl_kind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire<EndpointsSpec>", into = "Wire<EndpointsSpec>")]
pub struct Endpoints {
    pub metadata: Metadata,
    pub spec: EndpointsSpec,
}

impl_kind!(Endpoints, EndpointsSpec, "Endpoints", |metadata, spec| {
    let spec = spec.ok_or("missing field `spec`")?;
    Ok(Endpoints { metadata, spec })
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointsSpec {
    #[serde(default, with = "crate::wire::socket_addrs")]
    pub addresses: Vec<SocketAddr>,
    /// Expected peer identity (SPIFFE id) for mTLS to these addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Virtual IPs callers dial instead of an endpoint (a Kubernetes Service's cluster IPs):
    /// a connection redirected from one of them belongs to this service.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// The ports of `clusterIPs` and where each lands in the callee's pod. Without any, every
    /// port of a cluster IP is the same port of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

/// One port of a service's virtual IPs: callers dial `port`, the app listens on `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    /// The pod's port; `port` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}
