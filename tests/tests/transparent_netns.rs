//! Transparent routing by original destination, as in a Kubernetes pod: the caller's app
//! (a process of its own uid in namespace A) dials a Service's cluster IP or a pod IP on any
//! port; iptables sends it to A's outbound proxy, which finds the mesh service and the pod
//! port (`clusterIPs` × `ports` → `targetPort`) and hands the call to B's proxy, which delivers
//! it to that port of B's app. Unknown destinations pass through to where the app was headed.
//! Needs root, `ip`, `iptables` and `curl`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use weir_tests::netns::{self, Netns, NetnsPair};
use weir_tests::process::ChildGuard;
use weir_tests::proxy::{Addrs, Proxy};
use weir_tests::util::{TestDir, within};
use weir_tests::{bins, config};

const OUTBOUND_PORT: u16 = 4140;
const INBOUND_PORT: u16 = 4143;
/// The uid the caller's "app" runs as; only its connections are redirected, as
/// `weir-proxy init` redirects everything but the proxy's own uid.
const APP_UID: &str = "1000";
const CLUSTER_IP: &str = "10.96.0.12";

fn ns_addrs(inbound_ip: [u8; 4]) -> Addrs {
    Addrs {
        outbound: SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)),
        inbound: SocketAddr::from((inbound_ip, INBOUND_PORT)),
        admin: SocketAddr::from(([127, 0, 0, 1], 4191)),
    }
}

async fn spawn_app(ns: &Netns, dir: &TestDir, args: &[&str], log: &str) -> ChildGuard {
    let mut app = ChildGuard::spawn(
        log,
        ns.command(bins::testapp_bin()).args(args),
        Some(&dir.join(&format!("{log}.log"))),
        true,
    )
    .expect("spawn weir-testapp");
    app.wait_stdout_line("listening", Duration::from_secs(20))
        .await;
    app
}

/// `curl` in namespace A as the app's uid: what the app would see.
fn curl_as_app(ns: &Netns, url: &str) -> (String, serde_json::Value) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "setpriv", "--reuid", APP_UID])
        .args([
            "--regid",
            APP_UID,
            "--clear-groups",
            "curl",
            "-sS",
            "-m",
            "10",
        ])
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success(),
        "curl {url}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code.to_owned(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_pod_ports_route_through_the_mesh() {
    if let Some(reason) = netns::unavailable_reason() {
        eprintln!("SKIPPED cluster_ips_and_pod_ports_route_through_the_mesh: {reason}");
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED cluster_ips_and_pod_ports_route_through_the_mesh: curl is missing");
        return;
    }
    let dir = TestDir::new("transparent").expect("temp dir");
    let nets = NetnsPair::new().expect("creating network namespaces");

    // Namespace B, the callee pod: an app on two ports and a TCP echo on a third; a second
    // address on B's interface stands for a pod outside the mesh.
    let _web = spawn_app(
        &nets.b,
        &dir,
        &["http", "--listen", "0.0.0.0:8080", "--name", "web"],
        "web",
    )
    .await;
    let _metrics = spawn_app(
        &nets.b,
        &dir,
        &["http", "--listen", "0.0.0.0:9090", "--name", "metrics"],
        "metrics",
    )
    .await;
    let _echo = spawn_app(
        &nets.b,
        &dir,
        &["tcp-echo", "--listen", "127.0.0.1:7000"],
        "tcp-echo",
    )
    .await;
    let outside_ip = std::net::Ipv4Addr::from(u32::from(nets.b_ip) + 100);
    nets.b
        .ip(&["addr", "add", &format!("{outside_ip}/24"), "dev", "weir0"])
        .expect("second address in B");
    let b_config = dir.join("b.yaml");
    std::fs::write(&b_config, config::MESH_PERMISSIVE).expect("write B config");
    let inbound = Proxy::builder("inbound-web", dir.path())
        .service("web")
        .namespace("shop")
        .netns(&nets.b)
        .addrs(ns_addrs([0, 0, 0, 0]))
        .app_addr(SocketAddr::from(([127, 0, 0, 1], 8080)))
        .config(&b_config)
        .start()
        .await;

    // Namespace A, the caller pod: the Service's cluster IP is routable (as kube-proxy's
    // would be) and the app's outbound TCP goes to the outbound proxy.
    let b_ip = nets.b_ip.to_string();
    let a_config = dir.join("a.yaml");
    let endpoints = format!(
        "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  \
         addresses: [\"{b_ip}:{INBOUND_PORT}\"]\n  clusterIPs: [\"{CLUSTER_IP}\"]\n  \
         ports: [{{ port: 80, targetPort: 8080 }}, {{ port: 81, targetPort: 9090 }}, {{ port: 7, targetPort: 7000 }}]\n"
    );
    std::fs::write(
        &a_config,
        config::documents(&[config::MESH_PERMISSIVE, &endpoints]),
    )
    .expect("write A config");
    let outbound = Proxy::builder("outbound-client", dir.path())
        .service("client")
        .namespace("shop")
        .netns(&nets.a)
        .addrs(ns_addrs([127, 0, 0, 1]))
        .config(&a_config)
        .start()
        .await;
    nets.a
        .ip(&["route", "add", "10.96.0.0/16", "dev", "weir0"])
        .expect("route to the service range");
    nets.a
        .iptables(&[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--uid-owner",
            APP_UID,
            "-j",
            "REDIRECT",
            "--to-ports",
            "4140",
        ])
        .expect("iptables REDIRECT in A");

    // Service port 80 → targetPort 8080, and the Host the app wrote reaches the app.
    let (code, body) = curl_as_app(&nets.a, &format!("http://{CLUSTER_IP}/echo"));
    assert_eq!(code, "200", "{body}");
    assert_eq!(body["app"], "web", "{body}");
    assert!(
        body["headers"].get("x-weir-dst-port").is_none(),
        "the app never sees the port header: {body}"
    );
    // Service port 81 → 9090: before this work it reached --app-addr (8080).
    let (code, body) = curl_as_app(&nets.a, &format!("http://{CLUSTER_IP}:81/echo"));
    assert_eq!(
        (code.as_str(), &body["app"]),
        ("200", &"metrics".into()),
        "{body}"
    );
    // A pod IP on a port that is not the proxy's: delivered to that port.
    let (code, body) = curl_as_app(&nets.a, &format!("http://{b_ip}:9090/echo"));
    assert_eq!(
        (code.as_str(), &body["app"]),
        ("200", &"metrics".into()),
        "{body}"
    );
    // An app forging the port header cannot pick another port.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            nets.a.name(),
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
        ])
        .args([
            "--clear-groups",
            "curl",
            "-sS",
            "-m",
            "10",
            "-H",
            "x-weir-dst-port: 9090",
        ])
        .arg(format!("http://{CLUSTER_IP}/echo"))
        .output()
        .expect("curl");
    let forged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(forged["app"], "web", "{forged}");
    // A Service port the Endpoints do not declare: not routed, and nothing listens on the
    // virtual IP, so the connection fails instead of landing on some app port.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            nets.a.name(),
            "setpriv",
            "--reuid",
            APP_UID,
            "--regid",
            APP_UID,
        ])
        .args([
            "--clear-groups",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "10",
        ])
        .arg(format!("http://{CLUSTER_IP}:82/echo"))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(
        code, "502",
        "undeclared service port: passthrough to nowhere"
    );
    // A pod outside the mesh: passed through to its own address, not to the mesh.
    let (code, body) = curl_as_app(&nets.a, &format!("http://{outside_ip}:8080/echo"));
    assert_eq!(
        (code.as_str(), &body["app"]),
        ("200", &"web".into()),
        "{body}"
    );

    // Opaque TCP to the cluster IP's port 7 lands on the echo app's 7000.
    let script = format!(
        "import socket\ns = socket.create_connection(('{CLUSTER_IP}', 7), timeout=10)\n\
         s.sendall(b'\\x00\\x01binary\\xff')\ns.shutdown(socket.SHUT_WR)\n\
         got = b''\nwhile True:\n    c = s.recv(4096)\n    if not c: break\n    got += c\n\
         print(got.hex())\n"
    );
    let out = within(
        Duration::from_secs(20),
        "opaque echo via the cluster IP",
        async {
            tokio::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    nets.a.name(),
                    "setpriv",
                    "--reuid",
                    APP_UID,
                ])
                .args([
                    "--regid",
                    APP_UID,
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    &script,
                ])
                .output()
                .await
                .expect("run python3")
        },
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "000162696e617279ff",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = outbound.metrics().await;
    let mesh = out.get(
        "weir_requests_total",
        &[("direction", "outbound"), ("dst", "web")],
    );
    let passthrough = out.get(
        "weir_requests_total",
        &[("direction", "outbound"), ("dst", "passthrough")],
    );
    assert!(
        mesh >= 4.0,
        "mesh calls counted: {}",
        out.describe("weir_requests_total")
    );
    assert!(
        passthrough >= 2.0,
        "passthrough counted: {}",
        out.describe("weir_requests_total")
    );
    let inb = inbound.metrics().await;
    assert!(
        inb.get("weir_requests_total", &[("direction", "inbound")]) >= 4.0,
        "{}",
        inb.describe("weir_requests_total")
    );
}
