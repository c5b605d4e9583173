//! The published snapshot indexed for scoped discovery: each document as a named, versioned
//! resource, grouped by the service it belongs to, so a stream finds what its proxy needs in
//! a few hash lookups instead of reading the whole mesh.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weir_policy::Document;
use weir_proto::discovery::v1 as pb;

use crate::registry::ServiceKey;

/// One document as proxies receive it.
#[derive(Debug)]
pub struct Resource {
    /// `Kind/namespace/name`.
    pub name: Arc<str>,
    /// A hash of the JSON, so every replica gives the same content the same version.
    pub version: u64,
    pub document: pb::Document,
}

/// What callers of one service need, and what its own proxies need.
#[derive(Debug, Default)]
pub struct ServiceResources {
    pub policy: Option<Arc<Resource>>,
    pub endpoints: Option<Arc<Resource>>,
    /// Services its routes send to: their endpoints come with it.
    pub backends: Vec<ServiceKey>,
    /// Services its policy says it calls: its own proxies get them without asking.
    pub dependencies: Vec<ServiceKey>,
}

#[derive(Debug, Default)]
pub struct World {
    pub mesh: Vec<Arc<Resource>>,
    pub services: HashMap<ServiceKey, ServiceResources>,
    /// Pod IPs and cluster IPs → the services behind them, for `ip:port` subscriptions.
    by_ip: HashMap<IpAddr, Vec<ServiceKey>>,
}

/// `Kind/namespace/name`.
pub fn resource_name(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// FNV-1a: stable across builds and machines (std's hasher is not promised to be), and the
/// documents are small.
pub fn content_version(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl World {
    /// Indexes a snapshot's documents. A document that does not parse is still sent (the
    /// proxy NACKs it with the reason) but indexes nothing beyond its own service.
    pub fn index(documents: &[pb::Document]) -> World {
        let mut world = World::default();
        for doc in documents {
            let resource = Arc::new(Resource {
                name: resource_name(&doc.kind, &doc.namespace, &doc.name).into(),
                version: content_version(&doc.json),
                document: doc.clone(),
            });
            let parsed = serde_json::from_slice::<Document>(&doc.json).ok();
            match (doc.kind.as_str(), parsed) {
                ("MeshConfig", _) => world.mesh.push(resource),
                ("ServicePolicy", Some(Document::ServicePolicy(p))) => {
                    let ns = &p.metadata.namespace;
                    let entry = world.service(ns, &p.spec.service);
                    entry.policy = Some(resource);
                    entry.backends = p
                        .spec
                        .routes
                        .iter()
                        .flat_map(|r| &r.backends)
                        .map(|b| (ns.clone(), b.service.clone()))
                        .collect();
                    entry.backends.sort();
                    entry.backends.dedup();
                    entry.dependencies = p
                        .spec
                        .dependencies
                        .iter()
                        .filter_map(|d| service_key(d, ns))
                        .collect();
                }
                ("Endpoints", Some(Document::Endpoints(e))) => {
                    let key = (doc.namespace.clone(), doc.name.clone());
                    let ips = e
                        .spec
                        .addresses
                        .iter()
                        .map(SocketAddr::ip)
                        .chain(e.spec.cluster_ips.iter().copied());
                    for ip in ips {
                        let owners = world.by_ip.entry(ip).or_default();
                        if !owners.contains(&key) {
                            owners.push(key.clone());
                        }
                    }
                    world.service(&doc.namespace, &doc.name).endpoints = Some(resource);
                }
                _ => {
                    // Unparsable: keyed by its own name so a subscriber still gets (and
                    // NACKs) it.
                    let entry = world.service(&doc.namespace, &doc.name);
                    match doc.kind.as_str() {
                        "ServicePolicy" => entry.policy = Some(resource),
                        _ => entry.endpoints = Some(resource),
                    }
                }
            }
        }
        world
    }

    fn service(&mut self, namespace: &str, name: &str) -> &mut ServiceResources {
        self.services
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
    }

    /// The services a subscription key stands for: `name.namespace` if the mesh has it, or
    /// the services at an `ip:port` (the proxy's own lookup then picks by port).
    pub fn resolve(&self, key: &str) -> Vec<ServiceKey> {
        if let Ok(addr) = key.parse::<SocketAddr>() {
            return self.by_ip.get(&addr.ip()).cloned().unwrap_or_default();
        }
        let Some((name, ns)) = key.split_once('.') else {
            return Vec::new();
        };
        let key = (ns.to_string(), name.to_string());
        if self.services.contains_key(&key) {
            vec![key]
        } else {
            Vec::new()
        }
    }
}

/// `name` (in `namespace`) or `name.namespace` → its key.
pub fn service_key(reference: &str, namespace: &str) -> Option<ServiceKey> {
    match reference.split_once('.') {
        Some((name, ns)) if !name.is_empty() && !ns.is_empty() && !ns.contains('.') => {
            Some((ns.to_string(), name.to_string()))
        }
        Some(_) => None,
        None if reference.is_empty() => None,
        None => Some((namespace.to_string(), reference.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Vec<pb::Document> {
        weir_policy::parse_str("t.yaml", yaml)
            .expect("valid")
            .into_iter()
            .map(|d| pb::Document {
                kind: d.kind().to_string(),
                namespace: d.namespace().to_string(),
                name: d.name().to_string(),
                revision: 1,
                json: serde_json::to_vec(&d).expect("json").into(),
            })
            .collect()
    }

    const MESH: &str = r#"
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: strict }
---
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: pay, namespace: shop }
spec:
  service: payments
  dependencies: [ledger, fraud.risk]
  routes: [ { name: canary, backends: [ { service: payments-v2, weight: 100 } ] } ]
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments, namespace: shop }
spec: { addresses: ["10.0.3.7:4143"], clusterIPs: ["10.96.0.12"] }
"#;

    #[test]
    fn indexes_by_service_address_and_content() {
        let world = World::index(&docs(MESH));
        assert_eq!(world.mesh.len(), 1);
        let key = ("shop".to_string(), "payments".to_string());
        let svc = &world.services[&key];
        assert_eq!(
            svc.policy.as_ref().map(|r| &*r.name),
            Some("ServicePolicy/shop/pay")
        );
        assert_eq!(
            svc.endpoints.as_ref().map(|r| &*r.name),
            Some("Endpoints/shop/payments")
        );
        assert_eq!(
            svc.backends,
            [("shop".to_string(), "payments-v2".to_string())]
        );
        assert_eq!(
            svc.dependencies,
            [
                ("shop".to_string(), "ledger".to_string()),
                ("risk".to_string(), "fraud".to_string())
            ]
        );
        assert_eq!(world.resolve("payments.shop"), std::slice::from_ref(&key));
        assert_eq!(world.resolve("10.96.0.12:80"), std::slice::from_ref(&key));
        assert_eq!(world.resolve("10.0.3.7:9999"), [key]);
        assert!(world.resolve("example.com").is_empty());
        assert!(world.resolve("10.1.1.1:80").is_empty());
        assert!(world.resolve("localhost").is_empty());

        // Same content, same version; any change, another.
        let again = World::index(&docs(MESH));
        let v = |w: &World| {
            w.services[&("shop".into(), "payments".into())]
                .endpoints
                .as_ref()
                .map(|r| r.version)
        };
        assert_eq!(v(&world), v(&again));
        let moved = World::index(&docs(&MESH.replace("10.0.3.7", "10.0.3.8")));
        assert_ne!(v(&world), v(&moved));
    }

    #[test]
    fn service_keys() {
        let k = |n: &str, ns: &str| Some((ns.to_string(), n.to_string()));
        assert_eq!(service_key("ledger", "shop"), k("ledger", "shop"));
        assert_eq!(service_key("fraud.risk", "shop"), k("fraud", "risk"));
        assert_eq!(service_key("a.b.c", "shop"), None);
        assert_eq!(service_key("", "shop"), None);
    }
}
