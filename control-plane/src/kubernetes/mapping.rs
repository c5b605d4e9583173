//! From a Kubernetes Service and its EndpointSlices to the weir `Endpoints` it stands for. Pure
//! functions: the watch feeds them what its caches hold, the tests feed them `kubectl get -o
//! json` output.
//!
//! The rules (deploy/README.md is the contract these follow):
//! - **Name.** The document is named after the mesh service of the pods the Service selects,
//!   as far as a Service can see them: its own `weir.dev/service` annotation, else the
//!   selector's `app.kubernetes.io/name`, else the selector's `app`, else the Service's name.
//!   That is the contract's workload rule (annotation, `app.kubernetes.io/name`, `app`, name)
//!   read through the selector, so the document meets the registrations of those pods' proxies
//!   (`WEIR_SERVICE`) under one name. Services of one namespace that land on the same name
//!   (`web` and `web-headless`) are merged by [`merge`].
//! - **clusterIPs** from `spec.clusterIPs` (or `spec.clusterIP`); `None` (headless) is none.
//! - **ports**: the TCP ports (the proxy carries TCP only; a UDP port of a cluster IP must stay
//!   kube-proxy's). A numeric `targetPort` is taken as is; a named one is resolved from the
//!   EndpointSlices, whose ports carry the *Service* port's name and the number the pods use.
//!   When pods disagree on the number (a rollout renaming a container port), the number most
//!   ready endpoints use wins. A port that cannot be resolved yet is left out: the proxy then
//!   does not claim it, and kube-proxy keeps serving it.
//! - **pods**: `ip:port` of every ready endpoint for each listed port. These are *not*
//!   published as `addresses`: proxies dial addresses with mTLS, which a pod without a proxy
//!   cannot answer, and a Service with addresses stops being passed through to its cluster IP.
//!   The dialable addresses are the ones meshed pods' proxies register (`$(POD_IP):4143`); the
//!   pods here are what `weirctl endpoints` shows as source `kubernetes`.
//! - **ExternalName** Services are not the mesh's (DNS answers them with a name, no IP is
//!   redirected): skipped. A Service **without a selector** is mapped like any other; its
//!   slices are the ones its owner writes, labelled `kubernetes.io/service-name`.
//! - A Service with cluster IPs but no port left (only UDP, or every named port unresolved) is
//!   skipped: an Endpoints with clusterIPs and no ports claims *every* port of those IPs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort as KubePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_policy::{EndpointsSpec, ServicePort};

/// The annotation that names a workload's mesh service (deploy/README.md, Annotations).
pub const SERVICE_ANNOTATION: &str = "weir.dev/service";
/// The label EndpointSlices carry to say which Service they belong to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One Service as the mesh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub namespace: String,
    /// The mesh service name (see the module docs).
    pub name: String,
    /// `clusterIPs` and `ports`; `addresses` stay empty (see the module docs).
    pub spec: EndpointsSpec,
    /// Ready pods, `ip:targetPort`, sorted.
    pub pods: Vec<SocketAddr>,
}

/// Why a Service gets no Endpoints document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    ExternalName,
    /// The annotation names no valid mesh service.
    InvalidName(String),
    /// Cluster IPs, but no TCP port whose target is known.
    NoPorts,
    Incomplete(&'static str),
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::ExternalName => f.write_str("ExternalName Services are not meshed"),
            Skipped::InvalidName(why) => write!(f, "mesh service name: {why}"),
            Skipped::NoPorts => f.write_str(
                "no TCP port with a known targetPort (UDP only, or named targetPorts not in any EndpointSlice yet)",
            ),
            Skipped::Incomplete(what) => write!(f, "the Service has no {what}"),
        }
    }
}

/// `(namespace, Service name)` an EndpointSlice belongs to.
pub fn slice_owner(slice: &EndpointSlice) -> Option<(String, String)> {
    let namespace = slice.metadata.namespace.clone()?;
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace, service.clone()))
}

/// The mesh service name of the pods `svc` selects (see the module docs).
pub fn mesh_name(svc: &Service) -> Result<String, Skipped> {
    let annotated = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ANNOTATION));
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
    let from_selector = selector.and_then(|s| {
        s.get("app.kubernetes.io/name")
            .or_else(|| s.get("app"))
            .filter(|v| !v.is_empty())
    });
    let name = match (annotated, from_selector, &svc.metadata.name) {
        (Some(name), _, _) | (None, Some(name), _) | (None, None, Some(name)) => name.clone(),
        (None, None, None) => return Err(Skipped::Incomplete("metadata.name")),
    };
    weir_policy::dns_label(&name).map_err(Skipped::InvalidName)?;
    Ok(name)
}

/// Maps one Service and the EndpointSlices labelled with its name (others are ignored).
pub fn map_service(svc: &Service, slices: &[&EndpointSlice]) -> Result<Mapped, Skipped> {
    let spec = svc.spec.as_ref().ok_or(Skipped::Incomplete("spec"))?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(Skipped::ExternalName);
    }
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .ok_or(Skipped::Incomplete("metadata.namespace"))?;
    let service = svc
        .metadata
        .name
        .as_deref()
        .ok_or(Skipped::Incomplete("metadata.name"))?;
    let name = mesh_name(svc)?;
    let owner = (namespace.clone(), service.to_string());
    let slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| slice_owner(s).as_ref() == Some(&owner))
        .collect();

    let cluster_ips = cluster_ips(spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref());
    let tcp: Vec<&KubePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .collect();
    let mut ports = Vec::new();
    for p in &tcp {
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        if port == 0 {
            continue;
        }
        let Some(target) = target_port(p, &slices) else {
            continue;
        };
        ports.push(ServicePort {
            port,
            target_port: (target != port).then_some(target),
            name: p.name.clone().filter(|n| !n.is_empty()),
        });
    }
    if !cluster_ips.is_empty() && ports.is_empty() {
        return Err(Skipped::NoPorts);
    }
    let pods = ready_pods(&slices, &tcp);
    Ok(Mapped {
        namespace,
        name,
        spec: EndpointsSpec {
            addresses: Vec::new(),
            identity: None,
            // Ports describe cluster IPs (the validator insists); a headless Service has none.
            ports: if cluster_ips.is_empty() {
                Vec::new()
            } else {
                ports
            },
            cluster_ips,
        },
        pods,
    })
}

/// Folds `other` (a later Service, by name, of the same mesh service) into `into`: cluster IPs
/// and pods are united; a port both declare keeps `into`'s target.
pub fn merge(into: &mut Mapped, other: Mapped) {
    for ip in other.spec.cluster_ips {
        if !into.spec.cluster_ips.contains(&ip) {
            into.spec.cluster_ips.push(ip);
        }
    }
    for port in other.spec.ports {
        if !into.spec.ports.iter().any(|p| p.port == port.port) {
            into.spec.ports.push(port);
        }
    }
    into.spec.ports.sort_by_key(|p| p.port);
    into.pods.extend(other.pods);
    into.pods.sort();
    into.pods.dedup();
}

fn cluster_ips(ips: Option<&[String]>, ip: Option<&str>) -> Vec<IpAddr> {
    let listed: Vec<&str> = match ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => ip.into_iter().collect(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in listed {
        // "None" marks a headless Service; anything else unparsable is no IP to redirect.
        if let Ok(ip) = ip.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Kubernetes' default protocol is TCP.
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn ready(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    // The API says a missing `ready` is to be read as ready.
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// The slice port that stands for Service port `p`: same name ("" for an unnamed single
/// port) and protocol.
fn slice_port(slice: &EndpointSlice, p: &KubePort) -> Option<u16> {
    let want = p.name.as_deref().unwrap_or("");
    slice
        .ports
        .iter()
        .flatten()
        .find(|sp| sp.name.as_deref().unwrap_or("") == want && is_tcp(sp.protocol.as_deref()))
        .and_then(|sp| sp.port)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
}

fn target_port(p: &KubePort, slices: &[&EndpointSlice]) -> Option<u16> {
    match &p.target_port {
        // Kubernetes defaults targetPort to port.
        None => u16::try_from(p.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
        Some(IntOrString::String(_)) => {
            // Votes per number: ready endpoints first, then slices, so a Service whose pods
            // are all unready still gets its ports.
            let mut votes: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
            for slice in slices {
                if let Some(n) = slice_port(slice, p) {
                    let vote = votes.entry(n).or_default();
                    vote.0 += slice.endpoints.iter().filter(|e| ready(e)).count();
                    vote.1 += 1;
                }
            }
            // On a tie the lowest number: max_by_key keeps the last maximum, so iterate from
            // the highest.
            votes
                .into_iter()
                .rev()
                .max_by_key(|(_, vote)| *vote)
                .map(|(n, _)| n)
        }
    }
}

fn ready_pods(slices: &[&EndpointSlice], ports: &[&KubePort]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        // FQDN slices name hosts, not pods.
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let numbers: Vec<u16> = ports.iter().filter_map(|p| slice_port(slice, p)).collect();
        for endpoint in slice.endpoints.iter().filter(|e| ready(e)) {
            for ip in endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
            {
                out.extend(numbers.iter().map(|&n| SocketAddr::new(ip, n)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Services and EndpointSlices of a `kubectl get svc,endpointslices -o json` List.
    fn fixture(json: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        let list: serde_json::Value = serde_json::from_str(json).expect("fixture is JSON");
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for item in list["items"].as_array().expect("a List").iter().cloned() {
            match item["kind"].as_str() {
                Some("Service") => services.push(serde_json::from_value(item).expect("Service")),
                Some("EndpointSlice") => {
                    slices.push(serde_json::from_value(item).expect("EndpointSlice"))
                }
                other => panic!("unexpected kind {other:?}"),
            }
        }
        (services, slices)
    }

    fn map_named(json: &str, name: &str) -> Result<Mapped, Skipped> {
        let (services, slices) = fixture(json);
        let svc = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .expect("service in fixture");
        let slices: Vec<&EndpointSlice> = slices.iter().collect();
        map_service(svc, &slices)
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect("addr")).collect()
    }

    fn port(port: u16, target: Option<u16>, name: &str) -> ServicePort {
        ServicePort {
            port,
            target_port: target,
            name: Some(name.to_string()),
        }
    }

    #[test]
    fn cluster_ip_service_maps_ips_ports_and_only_ready_pods() {
        let m = map_named(include_str!("fixtures/clusterip.json"), "payments").expect("mapped");
        assert_eq!(
            (m.namespace.as_str(), m.name.as_str()),
            ("shop", "payments")
        );
        assert_eq!(
            m.spec.cluster_ips,
            vec!["10.96.12.34".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(m.spec.ports, vec![port(80, Some(8080), "http")]);
        assert!(
            m.spec.addresses.is_empty(),
            "pods are not dialable addresses"
        );
        // 10.244.2.31 is not ready.
        assert_eq!(m.pods, addrs(&["10.244.1.17:8080", "10.244.2.9:8080"]));
        let doc = weir_policy::Document::Endpoints(weir_policy::Endpoints {
            metadata: weir_policy::Metadata {
                name: m.name,
                namespace: m.namespace,
            },
            spec: m.spec,
        });
        assert!(
            weir_policy::validate("k8s", &doc).is_ok(),
            "a valid document"
        );
    }

    #[test]
    fn dual_stack_keeps_both_families_and_names_by_selector() {
        let m = map_named(include_str!("fixtures/dual-stack.json"), "shop-web").expect("mapped");
        // The selector's app.kubernetes.io/name is the pods' mesh service, not the Service name.
        assert_eq!(m.name, "web");
        let ips: Vec<IpAddr> = ["10.96.0.20", "fd00:10:96::20"]
            .iter()
            .map(|ip| ip.parse().expect("ip"))
            .collect();
        assert_eq!(m.spec.cluster_ips, ips);
        assert_eq!(m.spec.ports, vec![port(443, Some(8443), "https")]);
        assert_eq!(
            m.pods,
            addrs(&["10.244.1.40:8443", "[fd00:10:244:1::28]:8443"])
        );
    }

    #[test]
    fn headless_service_has_no_cluster_ips_and_no_ports() {
        let m = map_named(include_str!("fixtures/headless.json"), "db-headless").expect("mapped");
        assert_eq!(m.name, "db");
        assert!(m.spec.cluster_ips.is_empty(), "None is no IP");
        assert!(m.spec.ports.is_empty(), "ports describe cluster IPs");
        // The named targetPort is still resolved for the pods.
        assert_eq!(m.pods, addrs(&["10.244.1.50:5432", "10.244.2.51:5432"]));
    }

    #[test]
    fn named_target_ports_resolve_from_slices_across_several_slices() {
        let m = map_named(include_str!("fixtures/named-multi-port.json"), "orders-api")
            .expect("mapped");
        assert_eq!(m.name, "orders", "the annotation wins");
        assert_eq!(
            m.spec.ports,
            vec![
                // Two slices disagree (8080 with two ready pods, 8081 with none ready): the
                // number most ready endpoints use wins.
                port(80, Some(8080), "http"),
                port(9090, Some(9000), "grpc"),
                // `admin` is in no slice yet; statsd is UDP.
            ]
        );
        // The unready pod of the second slice and the canary Service's slice are left out.
        assert_eq!(
            m.pods,
            addrs(&[
                "10.244.1.60:8080",
                "10.244.1.60:9000",
                "10.244.2.61:8080",
                "10.244.2.61:9000"
            ])
        );
    }

    #[test]
    fn a_slice_update_moves_a_named_target_port() {
        let (services, mut slices) = fixture(include_str!("fixtures/named-multi-port.json"));
        // The rollout goes on: the new pod (8081) is ready, the two old ones are gone.
        slices[0].endpoints.clear();
        for e in &mut slices[1].endpoints {
            e.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            });
        }
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let m = map_service(&services[0], &refs).expect("mapped");
        assert_eq!(m.spec.ports[0], port(80, Some(8081), "http"));
        assert_eq!(m.pods, addrs(&["10.244.3.70:8081", "10.244.3.70:9000"]));
    }

    #[test]
    fn external_name_is_skipped_and_selectorless_is_mapped() {
        let json = include_str!("fixtures/other-kinds.json");
        assert_eq!(
            map_named(json, "billing-db").err(),
            Some(Skipped::ExternalName)
        );
        let m = map_named(json, "legacy-ledger").expect("mapped");
        assert_eq!(m.name, "legacy-ledger");
        assert_eq!(
            m.spec.ports,
            vec![ServicePort {
                port: 7000,
                target_port: None,
                name: None
            }]
        );
        // A hand-written slice without conditions counts as ready.
        assert_eq!(m.pods, addrs(&["192.168.50.10:7000"]));
    }

    #[test]
    fn a_udp_only_service_claims_no_ports() {
        let json = include_str!("fixtures/other-kinds.json");
        assert_eq!(map_named(json, "kube-dns").err(), Some(Skipped::NoPorts));
    }

    #[test]
    fn unresolved_named_ports_skip_the_service_until_a_slice_says() {
        let (services, _) = fixture(include_str!("fixtures/named-multi-port.json"));
        assert_eq!(map_service(&services[0], &[]).err(), Some(Skipped::NoPorts));
    }

    #[test]
    fn an_invalid_annotation_is_reported() {
        let (mut services, _) = fixture(include_str!("fixtures/clusterip.json"));
        services[0]
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(SERVICE_ANNOTATION.into(), "Not_A_Label".into());
        assert!(matches!(
            map_service(&services[0], &[]),
            Err(Skipped::InvalidName(_))
        ));
    }

    #[test]
    fn merge_unites_ips_and_pods_and_keeps_the_first_target() {
        let mut a = map_named(include_str!("fixtures/clusterip.json"), "payments").expect("a");
        let mut b = a.clone();
        b.spec.cluster_ips = vec!["10.96.12.99".parse().expect("ip")];
        b.spec.ports = vec![port(80, Some(9999), "http"), port(81, None, "alt")];
        b.pods = addrs(&["10.244.2.9:8080", "10.244.5.5:8080"]);
        merge(&mut a, b);
        assert_eq!(a.spec.cluster_ips.len(), 2);
        assert_eq!(
            a.spec.ports,
            vec![port(80, Some(8080), "http"), port(81, None, "alt")]
        );
        assert_eq!(
            a.pods,
            addrs(&["10.244.1.17:8080", "10.244.2.9:8080", "10.244.5.5:8080"])
        );
    }
}
