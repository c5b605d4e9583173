//! ServicePolicy's `routes`: unique names, well-formed matches, backends that can take traffic.

use std::collections::HashSet;

use super::findings::Findings;
use super::names::dns_label;
use crate::model::*;

pub(super) fn routes(f: &mut Findings, routes: &[Route]) {
    let mut names = HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("spec.routes[{i}]");
        f.check(format_args!("{at}.name"), dns_label(&route.name));
        if !names.insert(route.name.as_str()) {
            f.add(
                format_args!("{at}.name"),
                format!("route name {:?} is used twice", route.name),
            );
        }
        if let Some(m) = &route.r#match {
            route_match(f, &format!("{at}.match"), m);
        }
        if route.backends.is_empty() {
            f.add(
                format_args!("{at}.backends"),
                "must list at least one backend",
            );
            continue;
        }
        let mut services = HashSet::new();
        for (j, backend) in route.backends.iter().enumerate() {
            f.check(
                format_args!("{at}.backends[{j}].service"),
                dns_label(&backend.service),
            );
            if !services.insert(backend.service.as_str()) {
                f.add(
                    format_args!("{at}.backends[{j}].service"),
                    format!(
                        "backend {:?} is listed twice in this route",
                        backend.service
                    ),
                );
            }
        }
        if route.backends.iter().all(|b| b.weight == 0) {
            f.add(
                format_args!("{at}.backends"),
                "weights sum to 0; at least one backend needs a weight > 0",
            );
        }
    }
}

fn route_match(f: &mut Findings, at: &str, m: &RouteMatch) {
    if m.path_exact.is_some() && m.path_prefix.is_some() {
        f.add(at, "set pathExact or pathPrefix, not both");
    }
    for (name, path) in [("pathExact", &m.path_exact), ("pathPrefix", &m.path_prefix)] {
        if let Some(path) = path
            && !path.starts_with('/')
        {
            f.add(
                format_args!("{at}.{name}"),
                format!("must start with '/', got {path:?}"),
            );
        }
    }
    if let Some(method) = &m.method
        && (method.is_empty()
            || !method
                .bytes()
                .all(|b| is_tchar(b) && !b.is_ascii_lowercase()))
    {
        f.add(
            format_args!("{at}.method"),
            format!("must be an uppercase HTTP method such as GET or POST, got {method:?}"),
        );
    }
    for (name, value) in &m.headers {
        if name.is_empty() || !name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase()) {
            f.add(
                format_args!("{at}.headers"),
                format!("header names must be lowercase HTTP tokens, got {name:?}"),
            );
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            f.add(
                format_args!("{at}.headers.{name}"),
                "header values must not contain control characters",
            );
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
