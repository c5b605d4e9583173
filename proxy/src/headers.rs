//! Header hygiene between hops.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Set on HTTP/1 requests carried over HTTP/2 between proxies, so the far side restores
/// HTTP/1.1 for the application.
pub const X_WEIR_ORIG_PROTO: HeaderName = HeaderName::from_static("x-weir-orig-proto");
pub const HTTP11: HeaderValue = HeaderValue::from_static("HTTP/1.1");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is one `strip_hop_by_hop` may remove on its own (`connection` can list more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes connection-specific headers (RFC 9110 §7.6.1): they describe one hop and are
/// forbidden in HTTP/2. `te: trailers` survives because gRPC needs it end to end.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the few names present is much cheaper
    // than a hashed lookup (and name parse) per hop-by-hop name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = h.remove(header::CONNECTION)
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',') {
            let name = name.trim();
            if !name.is_empty() && !name.eq_ignore_ascii_case("te") {
                h.remove(name);
            }
        }
        // Usually `connection: keep-alive` was all there was.
        if !h.keys().any(is_hop_by_hop) {
            return;
        }
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
    if h.get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
}

/// An HTTP/1 request asking to switch protocols (WebSocket and the like).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// HTTP/1 needs a Host header; HTTP/2 requests carry the authority in the URI instead.
pub fn ensure_host<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// The authority a request is addressed to: the URI's (absolute form, HTTP/2) or the Host header.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_listed_and_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let req = Request::builder()
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .expect("request");
        assert!(is_upgrade(&req));
        let req = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .expect("request");
        assert!(!is_upgrade(&req));
    }
}
