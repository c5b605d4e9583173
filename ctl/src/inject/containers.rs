//! The containers and volumes inject adds, exactly as deploy/README.md ("The injected pod
//! spec") writes them; only images, init args and a few env values vary per workload.

use serde_norway::{Mapping, Value};

use super::annotations::Settings;
use super::yaml;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const INIT_NAME: &str = "weir-init";
pub const PROXY_NAME: &str = "weir-proxy";
pub const VOLUMES: [&str; 4] = [
    "weir-token",
    "weir-trust",
    "weir-cache",
    "weir-xtables-lock",
];

pub const PROXY_UID: u16 = 2102;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
/// The control plane's port: the proxy's own certificate requests must leave directly.
pub const CONTROL_PLANE_PORT: u16 = 8090;

/// What a grace period leaves for in-flight requests after the app has exited.
const DRAIN_MARGIN_SECONDS: i64 = 5;
const DEFAULT_GRACE_SECONDS: i64 = 30;

const INIT: &str = r#"
name: weir-init
image: IMAGE
imagePullPolicy: IfNotPresent
command: ["weir-proxy", "init"]
args: []
resources: { requests: { cpu: 10m, memory: 10Mi }, limits: { memory: 50Mi } }
securityContext:
  runAsUser: 65534
  runAsGroup: 65534
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: true
  capabilities: { drop: [ALL], add: [NET_ADMIN, NET_RAW] }
volumeMounts: [ { name: weir-xtables-lock, mountPath: /run } ]
"#;

const PROXY: &str = r#"
name: weir-proxy
image: IMAGE
imagePullPolicy: IfNotPresent
restartPolicy: Always
command: ["weir-proxy", "run"]
ports:
- { name: weir-inbound, containerPort: 4143 }
- { name: weir-admin, containerPort: 4191 }
env:
- { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
- { name: WEIR_POD_NAME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
- { name: WEIR_NAMESPACE, valueFrom: { fieldRef: { fieldPath: metadata.namespace } } }
- { name: WEIR_SERVICE_ACCOUNT, valueFrom: { fieldRef: { fieldPath: spec.serviceAccountName } } }
- { name: WEIR_SERVICE, value: SERVICE }
- { name: WEIR_INBOUND_ADDR, value: "0.0.0.0:4143" }
- { name: WEIR_OUTBOUND_ADDR, value: "127.0.0.1:4140" }
- { name: WEIR_ADMIN_ADDR, value: "0.0.0.0:4191" }
- { name: WEIR_ADVERTISE_ADDR, value: "$(POD_IP):4143" }
- { name: WEIR_CONTROL_PLANE, value: "https://weir-control.weir-system.svc.cluster.local:8090" }
- { name: WEIR_TOKEN_FILE, value: /var/run/secrets/weir/token }
- { name: WEIR_TRUST_BUNDLE, value: /var/run/weir/trust/trust-bundle.pem }
- { name: WEIR_CACHE_DIR, value: /var/run/weir/cache }
- { name: WEIR_DRAIN_TIMEOUT, value: DRAIN }
- { name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://jaeger.weir-system.svc.cluster.local:4317" }
startupProbe: { httpGet: { path: /ready, port: 4191 }, periodSeconds: 1, failureThreshold: 120 }
readinessProbe: { httpGet: { path: /ready, port: 4191 }, periodSeconds: 5 }
livenessProbe: { httpGet: { path: /live, port: 4191 }, periodSeconds: 10 }
resources: { requests: { cpu: 10m, memory: 20Mi }, limits: { memory: 256Mi } }
securityContext:
  runAsUser: 2102
  runAsGroup: 2102
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: { drop: [ALL] }
  seccompProfile: { type: RuntimeDefault }
volumeMounts:
- { name: weir-token, mountPath: /var/run/secrets/weir, readOnly: true }
- { name: weir-trust, mountPath: /var/run/weir/trust, readOnly: true }
- { name: weir-cache, mountPath: /var/run/weir/cache }
"#;

const POD_VOLUMES: &str = r#"
- name: weir-token
  projected: { sources: [ { serviceAccountToken: { audience: weir, expirationSeconds: 3600, path: token } } ] }
- name: weir-trust
  configMap: { name: weir-trust-bundle }
- { name: weir-cache, emptyDir: {} }
- { name: weir-xtables-lock, emptyDir: {} }
"#;

fn template(text: &str) -> Value {
    // The templates are constants above; a unit test parses each one.
    yaml::load_all(text)
        .ok()
        .and_then(|mut docs| docs.pop())
        .unwrap_or(Value::Null)
}

fn image(kind: &str) -> String {
    format!("ghcr.io/weir-dev/{kind}:{VERSION}")
}

/// `weir-proxy init`'s arguments: the defaults of deploy/README.md plus the annotations.
pub fn init_args(settings: &Settings) -> Vec<String> {
    let list = |defaults: &[u16], extra: &[u16]| {
        let mut ports: Vec<u16> = defaults.to_vec();
        for port in extra {
            if !ports.contains(port) {
                ports.push(*port);
            }
        }
        join_ports(&ports)
    };
    let mut args = vec![
        "--proxy-uid".to_string(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--skip-inbound-ports".into(),
        list(&[ADMIN_PORT], &settings.skip_inbound),
        "--skip-outbound-ports".into(),
        list(&[CONTROL_PLANE_PORT], &settings.skip_outbound),
    ];
    if !settings.inbound.is_empty() {
        args.push("--inbound-ports".into());
        args.push(join_ports(&settings.inbound));
    }
    if !settings.outbound.is_empty() {
        args.push("--outbound-ports".into());
        args.push(join_ports(&settings.outbound));
    }
    args
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn init_container(settings: &Settings) -> Value {
    let mut container = template(INIT);
    if let Value::Mapping(map) = &mut container {
        let image = settings
            .init_image
            .clone()
            .unwrap_or_else(|| image("weir-init"));
        map.insert("image".into(), Value::from(image));
        let args = init_args(settings).into_iter().map(Value::from).collect();
        map.insert("args".into(), Value::Sequence(args));
    }
    container
}

/// `terminationGracePeriodSeconds` − 5 s, at least 1 s, so the drain ends before the kubelet's
/// SIGKILL.
pub fn drain_timeout(grace_seconds: Option<i64>) -> String {
    let grace = grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    format!("{}s", (grace - DRAIN_MARGIN_SECONDS).max(1))
}

/// The proxy container: a native sidecar, or with `legacy` a regular container whose
/// postStart hook holds the app back until the proxy is ready.
pub fn proxy_container(
    settings: &Settings,
    drain: &str,
    probe_paths: &[String],
    legacy: bool,
) -> Value {
    let mut container = template(PROXY);
    let Value::Mapping(map) = &mut container else {
        return container;
    };
    let image = settings
        .proxy_image
        .clone()
        .unwrap_or_else(|| image("weir"));
    map.insert("image".into(), Value::from(image));
    if let Some(Value::Sequence(env)) = map.get_mut("env") {
        for var in env.iter_mut() {
            let value = match var.get("name").and_then(Value::as_str) {
                Some("WEIR_SERVICE") => settings.service.clone(),
                Some("WEIR_DRAIN_TIMEOUT") => drain.to_string(),
                _ => continue,
            };
            if let Value::Mapping(var) = var {
                var.insert("value".into(), Value::from(value));
            }
        }
        if !probe_paths.is_empty() {
            let mut var = Mapping::new();
            var.insert("name".into(), "WEIR_PROBE_PATHS".into());
            var.insert("value".into(), Value::from(probe_paths.join(",")));
            env.push(Value::Mapping(var));
        }
    }
    if legacy {
        map.shift_remove("restartPolicy");
        let hook = template("postStart: { exec: { command: [weir-proxy, wait] } }");
        let mut rebuilt = Mapping::new();
        for (key, value) in std::mem::take(map) {
            let before_resources = key.as_str() == Some("resources");
            if before_resources {
                rebuilt.insert("lifecycle".into(), hook.clone());
            }
            rebuilt.insert(key, value);
        }
        *map = rebuilt;
    }
    container
}

pub fn volumes() -> Vec<Value> {
    match template(POD_VOLUMES) {
        Value::Sequence(items) => items,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            disabled: false,
            service: "web".into(),
            skip_inbound: vec![9090, 4191],
            skip_outbound: vec![5432],
            inbound: vec![],
            outbound: vec![443, 80],
            proxy_image: None,
            init_image: Some("registry.local/weir-init:dev".into()),
        }
    }

    #[test]
    fn templates_parse() {
        assert!(template(INIT).is_mapping());
        assert!(template(PROXY).is_mapping());
        assert_eq!(volumes().len(), VOLUMES.len());
        for (volume, name) in volumes().iter().zip(VOLUMES) {
            assert_eq!(volume["name"], Value::from(name));
        }
    }

    #[test]
    fn init_args_add_annotations_to_the_defaults() {
        assert_eq!(
            init_args(&settings()),
            [
                "--proxy-uid",
                "2102",
                "--inbound-port",
                "4143",
                "--outbound-port",
                "4140",
                "--skip-inbound-ports",
                "4191,9090",
                "--skip-outbound-ports",
                "8090,5432",
                "--outbound-ports",
                "443,80",
            ]
        );
        let init = init_container(&settings());
        assert_eq!(init["image"], Value::from("registry.local/weir-init:dev"));
        assert_eq!(init["command"][1], Value::from("init"));
    }

    #[test]
    fn drain_fits_the_grace_period() {
        assert_eq!(drain_timeout(None), "25s");
        assert_eq!(drain_timeout(Some(60)), "55s");
        assert_eq!(drain_timeout(Some(5)), "1s");
        assert_eq!(drain_timeout(Some(0)), "1s");
    }

    #[test]
    fn proxy_env_and_legacy_form() {
        let paths = vec!["8080/healthz".to_string()];
        let proxy = proxy_container(&settings(), "25s", &paths, false);
        assert_eq!(proxy["restartPolicy"], Value::from("Always"));
        assert_eq!(
            proxy["image"],
            Value::from(format!("ghcr.io/weir-dev/weir:{VERSION}"))
        );
        let env = proxy["env"].as_sequence().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|v| v["name"] == name)
                .map(|v| v["value"].clone())
        };
        assert_eq!(value("WEIR_SERVICE"), Some("web".into()));
        assert_eq!(value("WEIR_DRAIN_TIMEOUT"), Some("25s".into()));
        assert_eq!(value("WEIR_PROBE_PATHS"), Some("8080/healthz".into()));
        let legacy = proxy_container(&settings(), "25s", &[], true);
        assert!(legacy.get("restartPolicy").is_none());
        assert_eq!(
            legacy["lifecycle"]["postStart"]["exec"]["command"],
            Value::Sequence(vec!["weir-proxy".into(), "wait".into()])
        );
        assert!(
            !legacy["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .any(|v| v["name"] == "WEIR_PROBE_PATHS")
        );
    }
}
