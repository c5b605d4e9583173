//! ServicePolicy routes compiled for the request path: first matching route wins, then a
//! weighted pick among its backends. Matching allocates nothing; the weighted pick is a
//! deterministic weighted round robin (an atomic counter), so a 90/10 split is exactly 90/10
//! over every 100 requests and a 100/0 split never leaks.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::{HeaderName, HeaderValue, Method, Request};

use crate::endpoint::Backend;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    matcher: Matcher,
    /// (cumulative weight, backend); weights of 0 are dropped at compile time.
    backends: Vec<(u64, Arc<Backend>)>,
    total: u64,
    stride: u64,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Matcher {
    path_exact: Option<String>,
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Route {
    /// `lookup` turns a backend service name into its endpoint set.
    pub fn compile(
        route: &weir_policy::Route,
        mut lookup: impl FnMut(&str) -> Arc<Backend>,
    ) -> Route {
        let matcher = route
            .r#match
            .as_ref()
            .map_or_else(Matcher::default, |m| Matcher {
                path_exact: m.path_exact.clone(),
                path_prefix: m
                    .path_prefix
                    .as_ref()
                    .map(|p| p.trim_end_matches('/').to_owned()),
                method: m
                    .method
                    .as_deref()
                    .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
                // Validation guarantees lowercase names and printable values; anything that still
                // does not parse is dropped rather than matching everything.
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
            });
        let mut total = 0;
        let backends = route
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| {
                total += u64::from(b.weight);
                (total, lookup(&b.service))
            })
            .collect();
        Route {
            name: route.name.clone(),
            matcher,
            backends,
            stride: stride(total),
            total,
            next: AtomicU64::new(0),
        }
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let m = &self.matcher;
        let path = req.uri().path();
        if let Some(exact) = &m.path_exact
            && path != exact
        {
            return false;
        }
        // Prefix matching is per path segment (as in the Gateway API): `/api` matches `/api`
        // and `/api/v1`, not `/apix`.
        if let Some(prefix) = &m.path_prefix
            && !(path.starts_with(prefix.as_str())
                && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
        {
            return false;
        }
        if let Some(method) = &m.method
            && req.method() != method
        {
            return false;
        }
        m.headers
            .iter()
            .all(|(k, v)| req.headers().get(k) == Some(v))
    }

    /// Every backend this route may send to.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().map(|(_, b)| b)
    }

    pub fn pick(&self) -> Option<&Arc<Backend>> {
        if self.total == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Relaxed) % self.total;
        let n = (u128::from(i) * u128::from(self.stride) % u128::from(self.total)) as u64;
        self.backends
            .iter()
            .find(|(cum, _)| n < *cum)
            .map(|(_, b)| b)
    }
}

/// The smallest number ≥ 0.618 × total that is coprime with total: multiplying by it permutes
/// 0..total, and the golden ratio spreads neighbours far apart.
fn stride(total: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    if total <= 2 {
        return 1;
    }
    let mut s = (total as f64 * 0.618) as u64;
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Backend;

    fn route(yaml_routes: &str) -> Vec<Route> {
        let doc = format!(
            "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: p, namespace: shop }}\nspec:\n  service: payments\n  routes:\n{yaml_routes}"
        );
        let docs = weir_policy::parse_str("t", &doc).expect("valid");
        let weir_policy::Document::ServicePolicy(p) = &docs[0] else {
            panic!("policy")
        };
        p.spec
            .routes
            .iter()
            .map(|r| Route::compile(r, |name| Arc::new(Backend::empty(name))))
            .collect()
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn matches_path_method_and_headers() {
        let routes = route(
            "    - name: canary\n      match: { pathPrefix: /api, method: POST, headers: { x-canary: \"true\" } }\n      backends: [ { service: v2 } ]\n",
        );
        let r = &routes[0];
        assert!(r.matches(&req("POST", "/api/pay", &[("x-canary", "true")])));
        assert!(r.matches(&req("POST", "/api", &[("x-canary", "true")])));
        assert!(!r.matches(&req("POST", "/apix", &[("x-canary", "true")])));
        assert!(!r.matches(&req("GET", "/api/pay", &[("x-canary", "true")])));
        assert!(!r.matches(&req("POST", "/api/pay", &[("x-canary", "false")])));
        assert!(!r.matches(&req("POST", "/api/pay", &[])));
    }

    #[test]
    fn weighted_pick_is_exact_over_a_cycle() {
        let routes = route(
            "    - name: split\n      backends: [ { service: a, weight: 90 }, { service: b, weight: 10 }, { service: c, weight: 0 } ]\n",
        );
        let r = &routes[0];
        let mut counts = std::collections::HashMap::new();
        for _ in 0..1000 {
            let b = r.pick().expect("backend");
            *counts.entry(b.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("a"), Some(&900));
        assert_eq!(counts.get("b"), Some(&100));
        assert_eq!(counts.get("c"), None, "weight 0 never gets traffic");
    }

    #[test]
    fn a_fifty_fifty_split_alternates() {
        let routes = route(
            "    - name: split\n      backends: [ { service: a, weight: 50 }, { service: b, weight: 50 } ]\n",
        );
        let picks: Vec<_> = (0..100)
            .map(|_| routes[0].pick().expect("backend").name.clone())
            .collect();
        assert_eq!(picks.iter().filter(|n| *n == "a").count(), 50);
        // Never more than two in a row for one backend.
        assert!(
            picks.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
            "{picks:?}"
        );
    }
}
