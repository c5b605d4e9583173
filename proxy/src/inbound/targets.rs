//! Where the inbound delivers a request or stream: `--app-addr`, or another port on the app's
//! IP when the caller dialled one (a Service's `targetPort`, or the pod port a redirected
//! connection was headed to). Each port keeps its own idle HTTP/1 connections and h2 slot.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};

use crate::client::app::AppPool;
use crate::client::h2::H2Slot;

/// The pod port the caller's proxy resolved the call to (see `outbound::Outbound::proxy`).
pub const X_WEIR_DST_PORT: HeaderName = HeaderName::from_static("x-weir-dst-port");

/// Ports beyond this many distinct ones get no pool of their own: a caller naming ever new
/// ports cannot grow the map without bound, and such ports are not worth keeping warm.
const MAX_POOLED_PORTS: usize = 64;

pub struct AppTarget {
    pub addr: SocketAddr,
    pub http1: Arc<AppPool>,
    pub h2: Arc<H2Slot>,
}

impl AppTarget {
    fn new(addr: SocketAddr) -> AppTarget {
        AppTarget {
            addr,
            http1: AppPool::new(addr),
            h2: H2Slot::app(addr),
        }
    }
}

/// `--app-addr` without a lookup (the common case), any other port from a copy-on-write map:
/// reads take no lock, a new port is rare.
pub enum Target<'a> {
    Default(&'a AppTarget),
    Other(Arc<AppTarget>),
}

impl Deref for Target<'_> {
    type Target = AppTarget;

    fn deref(&self) -> &AppTarget {
        match self {
            Target::Default(t) => t,
            Target::Other(t) => t,
        }
    }
}

pub struct AppTargets {
    default: AppTarget,
    others: ArcSwap<HashMap<u16, Arc<AppTarget>>>,
    /// The proxy's own listener ports: a request naming one goes to `--app-addr` instead of
    /// looping back into the proxy.
    own_ports: Vec<u16>,
    /// The kubelet's probes, allowed in plaintext under strict mTLS.
    pub probes: super::probes::Probes,
}

impl AppTargets {
    pub fn new(app_addr: SocketAddr, own_ports: Vec<u16>) -> AppTargets {
        AppTargets {
            default: AppTarget::new(app_addr),
            others: ArcSwap::from_pointee(HashMap::new()),
            own_ports,
            probes: super::probes::Probes::default(),
        }
    }

    pub fn with_probes(mut self, probes: super::probes::Probes) -> AppTargets {
        self.probes = probes;
        self
    }

    /// The target for `port` (`None`: the caller named none).
    pub fn get(&self, port: Option<u16>) -> Target<'_> {
        let port = match port {
            Some(p) if p != 0 && p != self.default.addr.port() && !self.own_ports.contains(&p) => p,
            _ => return Target::Default(&self.default),
        };
        if let Some(t) = self.others.load().get(&port) {
            return Target::Other(t.clone());
        }
        let addr = SocketAddr::new(self.default.addr.ip(), port);
        let mut made = None;
        self.others.rcu(|map| {
            let mut map = HashMap::clone(map);
            if map.len() < MAX_POOLED_PORTS {
                let t = map
                    .entry(port)
                    .or_insert_with(|| Arc::new(AppTarget::new(addr)));
                made = Some(t.clone());
            }
            map
        });
        Target::Other(made.unwrap_or_else(|| Arc::new(AppTarget::new(addr))))
    }
}

/// Takes the caller proxy's `x-weir-dst-port` off the request (the app never sees it).
pub fn take_dst_port(headers: &mut HeaderMap) -> Option<u16> {
    let v = headers.remove(X_WEIR_DST_PORT)?;
    v.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> AppTargets {
        AppTargets::new(SocketAddr::from(([127, 0, 0, 1], 8080)), vec![4143, 4191])
    }

    #[test]
    fn own_ports_and_the_app_port_use_the_default() {
        let t = targets();
        for port in [None, Some(0), Some(8080), Some(4143), Some(4191)] {
            assert!(matches!(t.get(port), Target::Default(_)), "{port:?}");
        }
    }

    #[test]
    fn another_port_is_on_the_app_ip_and_kept() {
        let t = targets();
        let a = t.get(Some(9090));
        assert_eq!(a.addr, SocketAddr::from(([127, 0, 0, 1], 9090)));
        let Target::Other(a) = a else { panic!() };
        let Target::Other(b) = t.get(Some(9090)) else {
            panic!()
        };
        assert!(Arc::ptr_eq(&a, &b), "the pool for a port is reused");
    }

    #[test]
    fn the_map_is_bounded() {
        let t = targets();
        for port in 10_000..10_000 + 2 * MAX_POOLED_PORTS as u16 {
            assert_eq!(t.get(Some(port)).addr.port(), port);
        }
        assert_eq!(t.others.load().len(), MAX_POOLED_PORTS);
    }

    #[test]
    fn dst_port_header_is_removed_and_parsed() {
        let mut h = HeaderMap::new();
        h.insert(X_WEIR_DST_PORT, "9090".parse().unwrap());
        assert_eq!(take_dst_port(&mut h), Some(9090));
        assert!(h.is_empty());
        h.insert(X_WEIR_DST_PORT, "nope".parse().unwrap());
        assert_eq!(take_dst_port(&mut h), None);
        assert!(h.is_empty());
    }
}
