//! The kubelet's HTTP probes under strict mTLS. The kubelet has no mesh identity and its probes
//! of the app's ports are redirected to the inbound listener like any other connection; without
//! an exception a strict mesh would fail every pod's readiness. Exactly the probes the pod spec
//! declares (`--probe-paths PORT/PATH`, written by `weirctl inject`) may arrive in plaintext:
//! `GET`/`HEAD` of that path on that port, nothing else (Linkerd's default probe
//! authorization works the same way).
use http::{Method, Request};

#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// (port, path without query); a pod declares a handful.
    entries: Vec<(u16, Box<str>)>,
}

impl Probes {
    /// Parses `PORT/PATH` entries, e.g. `8080/healthz`.
    pub fn parse(specs: &[String]) -> Result<Probes, String> {
        let entries = specs
            .iter()
            .map(|spec| {
                let bad = || format!("expected PORT/PATH like 8080/healthz, got {spec:?}");
                let (port, path) = spec.split_once('/').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                if port == 0 {
                    return Err(bad());
                }
                let path = path.split('?').next().unwrap_or_default();
                Ok((port, format!("/{path}").into_boxed_str()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Probes { entries })
    }

    /// Whether plaintext connections to `port` may carry probes.
    pub fn has_port(&self, port: Option<u16>) -> bool {
        port.is_some_and(|p| self.entries.iter().any(|(q, _)| *q == p))
    }

    /// Whether `req`, arriving in plaintext on `port`, is one of the declared probes.
    pub fn allows<B>(&self, port: Option<u16>, req: &Request<B>) -> bool {
        if self.entries.is_empty() || !matches!(*req.method(), Method::GET | Method::HEAD) {
            return false;
        }
        let path = req.uri().path();
        port.is_some_and(|p| self.entries.iter().any(|(q, r)| *q == p && **r == *path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("request")
    }

    #[test]
    fn only_the_declared_probe_passes() {
        let probes =
            Probes::parse(&["8080/healthz".into(), "9000/ready?full=1".into()]).expect("valid");
        assert!(probes.allows(Some(8080), &req(Method::GET, "/healthz")));
        assert!(probes.allows(Some(8080), &req(Method::HEAD, "/healthz?x=1")));
        assert!(probes.allows(Some(9000), &req(Method::GET, "/ready")));
        assert!(!probes.allows(Some(8080), &req(Method::POST, "/healthz")));
        assert!(!probes.allows(Some(8080), &req(Method::GET, "/healthz/x")));
        assert!(!probes.allows(Some(8080), &req(Method::GET, "/admin")));
        assert!(!probes.allows(Some(8081), &req(Method::GET, "/healthz")));
        assert!(!probes.allows(None, &req(Method::GET, "/healthz")));
        assert!(probes.has_port(Some(9000)) && !probes.has_port(Some(1)));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["healthz", "x/healthz", "0/healthz", "70000/a"] {
            let err = Probes::parse(&[bad.into()]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        let root = Probes::parse(&["80/".into()]).expect("valid");
        assert!(root.allows(Some(80), &req(Method::GET, "/")));
    }
}
