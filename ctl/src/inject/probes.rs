//! `WEIR_PROBE_PATHS` from the app containers' kubelet probes (deploy/README.md, "Probes").

use serde_norway::{Mapping, Value};

use super::FieldError;
use super::documents::describe;

const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// What the probes of a pod need from the proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Probes {
    /// `PORT/PATH` of every plain-HTTP probe, first seen first, without repeats.
    pub paths: Vec<String>,
    /// Probes the proxy cannot let through under strict mTLS: (field, port, why).
    pub unexempted: Vec<(String, u16, &'static str)>,
}

/// Reads the probes of `containers` and of the pod's own native sidecars (init containers with
/// `restartPolicy: Always`, which the kubelet probes too). `spec_field` is the pod spec's path.
pub fn collect(spec: &Mapping, spec_field: &str) -> Result<Probes, FieldError> {
    let mut probes = Probes::default();
    for list in ["initContainers", "containers"] {
        let Some(Value::Sequence(containers)) = spec.get(list) else {
            continue;
        };
        for (i, container) in containers.iter().enumerate() {
            let Value::Mapping(container) = container else {
                continue;
            };
            let native_sidecar =
                container.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            if list == "initContainers" && !native_sidecar {
                continue;
            }
            let container_field = format!("{spec_field}.{list}[{i}]");
            for probe in PROBES {
                let Some(Value::Mapping(probe_spec)) = container.get(probe) else {
                    continue;
                };
                let field = format!("{container_field}.{probe}");
                read_probe(container, probe_spec, &field, &mut probes)?;
            }
        }
    }
    Ok(probes)
}

fn read_probe(
    container: &Mapping,
    probe: &Mapping,
    field: &str,
    probes: &mut Probes,
) -> Result<(), FieldError> {
    if let Some(Value::Mapping(http)) = probe.get("httpGet") {
        let port_field = format!("{field}.httpGet.port");
        let port = port(container, http.get("port"), &port_field)?;
        let https = http
            .get("scheme")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        if https {
            probes.unexempted.push((port_field, port, "an HTTPS probe"));
        } else if path.contains(',') {
            // The proxy's list is comma-separated: such a path cannot be named in it.
            probes
                .unexempted
                .push((port_field, port, "a probe path with a comma"));
        } else {
            let entry = format!("{port}/{}", path.strip_prefix('/').unwrap_or(path));
            if !probes.paths.contains(&entry) {
                probes.paths.push(entry);
            }
        }
    } else if let Some(Value::Mapping(grpc)) = probe.get("grpc") {
        let port_field = format!("{field}.grpc.port");
        let port = port(container, grpc.get("port"), &port_field)?;
        probes.unexempted.push((port_field, port, "a gRPC probe"));
    }
    Ok(())
}

/// A probe's port: a number, or the name of one of this container's `ports`.
fn port(container: &Mapping, value: Option<&Value>, field: &str) -> Result<u16, FieldError> {
    match value {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| FieldError::new(field, format!("expected a port 1-65535, got {n}"))),
        Some(Value::String(name)) => {
            let declared = container
                .get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()));
            declared
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    FieldError::new(
                        field,
                        format!(
                            "named port {name:?} is not declared in this container's ports \
                             (with a containerPort)"
                        ),
                    )
                })
        }
        Some(other) => Err(FieldError::new(
            field,
            format!("expected a port number or name, got {}", describe(other)),
        )),
        None => Err(FieldError::new(field, "missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::yaml;

    fn spec(text: &str) -> Mapping {
        match yaml::load_all(text).expect("valid").pop() {
            Some(Value::Mapping(map)) => map,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn named_ports_resolve_per_container() {
        let pod = spec(
            "
initContainers:
- name: setup
  image: busybox
- name: log-shipper
  image: shipper
  restartPolicy: Always
  ports: [{name: http, containerPort: 9000}]
  readinessProbe: {httpGet: {path: /ok, port: http}}
containers:
- name: web
  image: web
  ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}]
  startupProbe: {httpGet: {path: /healthz, port: http}}
  readinessProbe: {httpGet: {path: /ready?full=1, port: 8080}}
  livenessProbe: {httpGet: {path: /healthz, port: http}}
- name: api
  image: api
  ports: [{containerPort: 8443, name: https}]
  livenessProbe: {grpc: {port: 9090}}
  readinessProbe: {httpGet: {port: https, scheme: HTTPS}}
  startupProbe: {tcpSocket: {port: 8443}}
- name: root
  image: root
  livenessProbe: {httpGet: {port: 7070}}
",
        );
        let probes = collect(&pod, "spec").expect("valid");
        assert_eq!(
            probes.paths,
            ["9000/ok", "8080/healthz", "8080/ready?full=1", "7070/"]
        );
        assert_eq!(
            probes.unexempted,
            [
                (
                    "spec.containers[1].readinessProbe.httpGet.port".to_string(),
                    8443,
                    "an HTTPS probe"
                ),
                (
                    "spec.containers[1].livenessProbe.grpc.port".to_string(),
                    9090,
                    "a gRPC probe"
                ),
            ]
        );
    }

    #[test]
    fn an_undeclared_named_port_is_an_error() {
        let pod = spec(
            "
containers:
- name: web
  image: web
  ports: [{name: http, containerPort: 8080}]
- name: side
  image: side
  livenessProbe: {httpGet: {path: /, port: http}}
",
        );
        let err = collect(&pod, "spec.template.spec").expect_err("undeclared");
        assert_eq!(
            err.field,
            "spec.template.spec.containers[1].livenessProbe.httpGet.port"
        );
        assert!(err.reason.contains("\"http\""), "{}", err.reason);
    }
}
