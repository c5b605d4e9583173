//! The output of `weirctl inject` run as pods. Two Deployments (a frontend whose own init
//! container already calls the backend, and the backend) go through the real `weirctl inject`;
//! the test kubelet (weir_tests::kube::pod) then runs each injected pod template as written:
//! a network namespace on a node bridge, the iptables init container as uid 65534 with only
//! NET_ADMIN/NET_RAW, the native sidecar as uid 2102 on a read-only root, the workload's init
//! container, the app, and every probe the spec declares. Identities come from projected
//! service-account tokens (ES256 JWTs the test signs, verified by `weir-control
//! --kubernetes-issuer/--kubernetes-jwks`). The apps call each other by Service name and
//! cluster IP knowing nothing of the mesh; the callee sees the caller's service-account
//! identity; plaintext from outside the mesh is refused under strict; the kubelet's probes pass.
//!
//! No Kubernetes API server runs here: the Endpoints documents `weir-control --kubernetes`
//! derives from Services and EndpointSlices are applied with weirctl instead, and cluster DNS
//! is each pod's /etc/hosts. Needs root, `ip`, `iptables`, `setcap`, `setpriv`, `unshare`, `curl`.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use serde_json::Value;
use weir_tests::bins;
use weir_tests::control::ControlPlane;
use weir_tests::kube::cluster::Cluster;
use weir_tests::kube::images;
use weir_tests::kube::jwt::Issuer;
use weir_tests::kube::manifest;
use weir_tests::kube::pod::{self, Image, PodContext};
use weir_tests::netns::unavailable_reason;
use weir_tests::raw_http;
use weir_tests::util::TestDir;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const CONTROL_NAME: &str = "weir-control.weir-system.svc.cluster.local";
const BACKEND_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const FRONTEND_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const APP_IMAGE: &str = "registry.example.com/shop/testapp:1.4.2";

/// What a user would write: Services and Deployments with named ports, probes and, on the
/// frontend, an init container that needs the backend before the app starts.
fn app_manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{ name: backend, namespace: shop }}
spec:
  selector: {{ app: backend }}
  ports: [ {{ name: http, port: 80, targetPort: http }} ]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: backend, namespace: shop, labels: {{ app: backend }} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: backend }} }}
  template:
    metadata: {{ labels: {{ app: backend }} }}
    spec:
      serviceAccountName: backend
      containers:
      - name: app
        image: {APP_IMAGE}
        command: ["weir-testapp", "http", "--listen", "0.0.0.0:8080", "--name", "backend"]
        ports: [ {{ name: http, containerPort: 8080 }} ]
        readinessProbe: {{ httpGet: {{ path: /healthz, port: http }}, periodSeconds: 2 }}
        livenessProbe: {{ tcpSocket: {{ port: http }}, periodSeconds: 10 }}
        securityContext: {{ runAsUser: 1000, runAsNonRoot: true }}
---
apiVersion: v1
kind: Service
metadata: {{ name: frontend, namespace: shop }}
spec:
  selector: {{ app: frontend }}
  ports: [ {{ name: http, port: 80, targetPort: 8080 }} ]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: frontend, namespace: shop, labels: {{ app: frontend }} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: frontend }} }}
  template:
    metadata: {{ labels: {{ app: frontend }} }}
    spec:
      serviceAccountName: frontend
      terminationGracePeriodSeconds: 20
      initContainers:
      - name: wait-for-backend
        image: {APP_IMAGE}
        command: ["curl", "-fsS", "--max-time", "10", "-o", "/dev/null", "http://backend.shop.svc.cluster.local/healthz"]
        securityContext: {{ runAsUser: 1000 }}
      containers:
      - name: app
        image: {APP_IMAGE}
        command: ["weir-testapp", "http", "--listen", "0.0.0.0:8080", "--name", "frontend"]
        ports: [ {{ name: web, containerPort: 8080 }} ]
        startupProbe: {{ httpGet: {{ path: /healthz, port: web }}, periodSeconds: 1, failureThreshold: 30 }}
        securityContext: {{ runAsUser: 1000 }}
"#
    )
}

/// The Endpoints `weir-control --kubernetes` would derive from the two Services (cluster IP,
/// port → targetPort); the pod addresses come from the sidecars' own registrations.
fn derived_endpoints() -> String {
    format!(
        "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: backend, namespace: shop }}\n\
         spec: {{ clusterIPs: [\"{BACKEND_CLUSTER_IP}\"], ports: [{{ port: 80, targetPort: 8080 }}] }}\n\
         ---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: frontend, namespace: shop }}\n\
         spec: {{ clusterIPs: [\"{FRONTEND_CLUSTER_IP}\"], ports: [{{ port: 80, targetPort: 8080 }}] }}\n"
    )
}

/// `curl` run inside pod namespace `ns` as the app's uid, as `kubectl exec` would; returns
/// (status line code, body).
fn curl_in_pod(ns: &str, url: &str) -> (String, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
        ])
        .args([
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("run curl in the pod");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().to_owned(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn client_id(echo_body: &str) -> Option<String> {
    let json: Value = serde_json::from_str(echo_body).ok()?;
    json.pointer("/headers/x-weir-client-id/0")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_talk_over_mtls_with_service_account_identities() {
    if let Some(why) = unavailable_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = TestDir::new("kubernetes-pods").expect("test dir");

    // 1. The user's manifests through the real `weirctl inject`.
    let app = dir.join("app.yaml");
    std::fs::write(&app, app_manifests()).expect("write manifests");
    let injected = Command::new(bins::weirctl_bin())
        .args(["inject", "-f"])
        .arg(&app)
        .output()
        .expect("run weirctl inject");
    assert!(
        injected.status.success(),
        "weirctl inject failed: {}",
        String::from_utf8_lossy(&injected.stderr)
    );
    let docs =
        manifest::documents(&String::from_utf8_lossy(&injected.stdout)).expect("inject output");

    // 2. A node with the control plane on it, verifying service-account tokens.
    let mut cluster = Cluster::new().expect("node namespace");
    let issuer = Issuer::new(ISSUER).expect("token issuer");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, issuer.jwks()).expect("write jwks");
    let control_addr = SocketAddr::from((cluster.node_ip, 8090));
    let data_dir = dir.join("control");
    cluster
        .write_node_hosts(&[(CONTROL_NAME.to_owned(), cluster.node_ip)])
        .expect("node hosts");
    let control = ControlPlane::start_in_netns(
        cluster.node.name(),
        CONTROL_NAME,
        control_addr,
        &data_dir,
        dir.path(),
        &[
            "--server-name",
            CONTROL_NAME,
            "--kubernetes-issuer",
            ISSUER,
            "--kubernetes-jwks",
            jwks.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    control.apply(&dir.join("endpoints.yaml"), &derived_endpoints());
    let trust_bundle = std::fs::read_to_string(control.trust_bundle()).expect("trust bundle");

    // 3. The images, what the kubelet knows of the cluster, and the pods' networks.
    let image_root = dir.join("images");
    let mut image_map: HashMap<String, Image> = HashMap::new();
    image_map.insert(
        "ghcr.io/weir-dev/weir:0.1.0".into(),
        images::weir(&image_root).expect("weir image"),
    );
    image_map.insert(
        "ghcr.io/weir-dev/weir-init:0.1.0".into(),
        images::weir_init(&image_root).expect("weir-init image"),
    );
    let mut app_image = images::testapp(&image_root).expect("app image");
    // The app image is a distro image: curl and its libraries come from the (read-only) root.
    app_image.path_env = "/usr/local/bin:/usr/bin:/bin".into();
    image_map.insert(APP_IMAGE.into(), app_image);
    let config_maps = HashMap::from([(
        "weir-trust-bundle".to_owned(),
        BTreeMap::from([("trust-bundle.pem".to_owned(), trust_bundle)]),
    )]);
    let token = |ns: &str, sa: &str, pod: &str, audience: &str, ttl: u64| {
        issuer.token(ns, sa, pod, audience, ttl)
    };
    let backend_net = cluster.add_pod_net("backend").expect("backend pod network");
    let frontend_net = cluster
        .add_pod_net("frontend")
        .expect("frontend pod network");
    let names = vec![
        (CONTROL_NAME.to_owned(), cluster.node_ip),
        (
            "jaeger.weir-system.svc.cluster.local".to_owned(),
            cluster.node_ip,
        ),
        (
            "backend.shop.svc.cluster.local".to_owned(),
            BACKEND_CLUSTER_IP,
        ),
        (
            "frontend.shop.svc.cluster.local".to_owned(),
            FRONTEND_CLUSTER_IP,
        ),
    ];
    backend_net.write_hosts("backend-0", &names).expect("hosts");
    frontend_net
        .write_hosts("frontend-0", &names)
        .expect("hosts");
    let context = |name: &str| PodContext {
        name: name.to_owned(),
        namespace: "shop".into(),
        images: &image_map,
        token: &token,
        config_maps: &config_maps,
        dir: dir.join(name),
        node_net: cluster.node_net(),
    };

    // 4. The pods, as the injected templates say.
    let backend_template =
        manifest::pod_template(manifest::find(&docs, "Deployment", "backend").expect("backend"))
            .expect("backend template");
    let frontend_template =
        manifest::pod_template(manifest::find(&docs, "Deployment", "frontend").expect("frontend"))
            .expect("frontend template");
    let backend = pod::start(&backend_net, backend_template, &context("backend-0"))
        .await
        .unwrap_or_else(|e| panic!("backend pod: {e:#}\ncontrol plane:\n{}", control.log_tail()));
    // The frontend's own init container reaches the backend by name before its app starts:
    // the sidecar was ready and its rules in place when it ran.
    let frontend = pod::start(&frontend_net, frontend_template, &context("frontend-0"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "frontend pod: {e:#}\ncontrol plane:\n{}",
                control.log_tail()
            )
        });
    assert!(
        frontend
            .completed_init
            .iter()
            .any(|(name, _)| name == "wait-for-backend"),
        "{:?}",
        frontend.completed_init
    );

    // 5. By Service name and by cluster IP, over mTLS with the caller's service account.
    let frontend_id = "spiffe://weir.local/ns/shop/sa/frontend";
    for url in [
        "http://backend.shop.svc.cluster.local/echo".to_owned(),
        format!("http://{BACKEND_CLUSTER_IP}/echo"),
    ] {
        let (code, body) = curl_in_pod(frontend_net.ns.name(), &url);
        assert_eq!(
            code,
            "200",
            "{url}: {body}\nfrontend proxy:\n{}",
            frontend.log_of("weir-proxy")
        );
        assert_eq!(
            client_id(&body).as_deref(),
            Some(frontend_id),
            "{url}: {body}"
        );
        assert!(body.contains("\"app\":\"backend\""), "{body}");
    }
    // And back: the backend calls the frontend's Service.
    let (code, body) = curl_in_pod(
        backend_net.ns.name(),
        "http://frontend.shop.svc.cluster.local/echo",
    );
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        client_id(&body).as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/backend"),
        "{body}"
    );

    // 6. Outside the mesh (the node), plaintext to the backend pod is refused under strict;
    // the kubelet's probe path still answers.
    let node = cluster.node_net();
    let backend_app = SocketAddr::from((backend.ip, 8080));
    let mut stream = node
        .connect(backend_app)
        .await
        .expect("connect from the node");
    let refused = raw_http::roundtrip(
        &mut stream,
        format!("GET /echo HTTP/1.1\r\nHost: {backend_app}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    match refused {
        Ok(resp) => {
            assert_eq!(
                resp.status,
                403,
                "plaintext reached the app: {}",
                resp.text()
            );
            assert_eq!(
                resp.header("x-weir-error"),
                Some("unauthorized"),
                "{:?}",
                resp.headers
            );
        }
        Err(e) => panic!("expected a 403 from the sidecar, got {e}"),
    }
    let mut stream = node
        .connect(backend_app)
        .await
        .expect("connect from the node");
    let probe = raw_http::roundtrip(
        &mut stream,
        format!("GET /healthz HTTP/1.1\r\nHost: {backend_app}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("probe");
    assert_eq!(probe.status, 200, "{}", probe.text());

    drop(frontend);
    drop(backend);
}
