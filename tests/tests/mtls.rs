//! mTLS between two proxies with certificates from files (`--cert/--key/--trust-bundle`):
//! identities proved by the handshake, checked against the endpoint table, enforced by the
//! callee's authorization policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use weir_tests::util::{TestDir, wait_until, within};
use weir_tests::{Proxy, apps, config, raw_http};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const ORDERS: &str = "spiffe://weir.local/ns/default/sa/orders";
const ECHO: &str = "spiffe://weir.local/ns/default/sa/echo";

struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "weir test root");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("root").pem();
    Ca {
        pem,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// Writes cert, key and bundle for `id` into `dir`; returns the proxy flags.
fn identity(dir: &Path, ca: &Ca, id: &str, name: &str) -> Vec<String> {
    identity_with(dir, ca, id, name, |_| {})
}

/// Like `identity`, letting the test change the leaf (e.g. its validity).
fn identity_with(
    dir: &Path,
    ca: &Ca,
    id: &str,
    name: &str,
    adjust: impl FnOnce(&mut CertificateParams),
) -> Vec<String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
    adjust(&mut params);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    let write = |suffix: &str, text: &str| -> PathBuf {
        let p = dir.join(format!("{name}.{suffix}"));
        std::fs::write(&p, text).expect("write");
        p
    };
    let (c, k, b) = (
        write("crt", &cert.pem()),
        write("key", &key.serialize_pem()),
        write("bundle", &ca.pem),
    );
    let s = |p: PathBuf| p.to_str().expect("utf-8").to_owned();
    vec![
        "--cert".into(),
        s(c),
        "--key".into(),
        s(k),
        "--trust-bundle".into(),
        s(b),
    ]
}

async fn get(entry: std::net::SocketAddr) -> raw_http::RawResponse {
    raw_http::get(entry, "echo", "/echo")
        .await
        .expect("response")
}

fn with_args(
    mut b: weir_tests::proxy::ProxyBuilder,
    args: &[String],
) -> weir_tests::proxy::ProxyBuilder {
    for a in args {
        b = b.arg(a);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_end_to_end_with_identity_checks_and_authorization() {
    within(TEST_TIMEOUT, "mTLS", async {
        let dir = TestDir::new("mtls").expect("dir");
        let root = ca();
        let app = apps::http::start("app").await;

        // Callee: strict (no MeshConfig), only orders may call.
        let policy = |allow: &str| {
            format!(
                "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: echo, namespace: default }}\nspec:\n  service: echo\n  authorization: {{ mode: allowList, allow: [\"{allow}\"] }}\n"
            )
        };
        let callee_cfg = dir.join("callee.yaml");
        std::fs::write(&callee_cfg, policy(ORDERS)).expect("write");
        let callee_id = identity(dir.path(), &root, ECHO, "echo");
        let mut callee = with_args(
            Proxy::builder("echo", dir.path()).service("echo").app_addr(app.addr).config(&callee_cfg),
            &callee_id,
        )
        .start()
        .await;

        // Caller: strict, expects echo's identity at the callee.
        let caller_cfg = dir.join("caller.yaml");
        let endpoints = |id: &str| {
            format!(
                "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: echo, namespace: default }}\nspec: {{ addresses: [\"{}\"], identity: \"{id}\" }}\n",
                callee.inbound()
            )
        };
        std::fs::write(&caller_cfg, endpoints(ECHO)).expect("write");
        let caller_id = identity(dir.path(), &root, ORDERS, "orders");
        let mut caller = with_args(
            Proxy::builder("orders", dir.path()).service("orders").config(&caller_cfg),
            &caller_id,
        )
        .start()
        .await;

        // 1. Two proxies talk mTLS; the app learns the caller's proven identity.
        let rsp = get(caller.outbound()).await;
        assert_eq!(rsp.status, 200, "{:?} {}", rsp.header("x-weir-error"), rsp.text());
        let seen = rsp.json().expect("json");
        assert_eq!(seen["headers"]["x-weir-client-id"][0], ORDERS, "{seen}");

        // 2. Plaintext to the strict inbound port is refused.
        let refused_before = callee.metric("weir_inbound_refused_total", &[]).await;
        let plain = raw_http::get(callee.inbound(), "echo", "/echo").await;
        assert!(plain.is_err(), "plaintext must not be answered: {plain:?}");
        assert_eq!(callee.metric("weir_inbound_refused_total", &[]).await, refused_before + 1.0);

        // 3. TLS without a client certificate is refused (openssl as the stranger).
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &callee.inbound().to_string(), "-alpn", "h2", "-tls1_3"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        // In TLS 1.3 the server judges the client's certificate after the client's Finished, so
        // openssl itself may report success; the callee's refusal counter is the evidence.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("HTTP/"), "no HTTP may flow without a client certificate:\n{text}");
        wait_until("the refusal is counted", Duration::from_secs(10), || async {
            callee.metric("weir_inbound_refused_total", &[]).await >= refused_before + 2.0
        })
        .await;

        // 4. A callee presenting the wrong identity is refused by the caller.
        std::fs::write(&caller_cfg, endpoints("spiffe://weir.local/ns/default/sa/someone-else")).expect("write");
        let v = caller.config_version().await;
        caller.signal(libc::SIGHUP);
        wait_until("caller reloaded", Duration::from_secs(10), || async { caller.config_version().await > v }).await;
        let rsp = get(caller.outbound()).await;
        assert_eq!(rsp.status, 502);
        assert_eq!(rsp.header("x-weir-error"), Some("identity-mismatch"));
        std::fs::write(&caller_cfg, endpoints(ECHO)).expect("write");
        let v = caller.config_version().await;
        caller.signal(libc::SIGHUP);
        wait_until("caller reloaded", Duration::from_secs(10), || async { caller.config_version().await > v }).await;

        // 5. Authorization: a policy change denying orders applies on the open connection.
        assert_eq!(get(caller.outbound()).await.status, 200);
        let tls_true = callee.metric("weir_requests_total", &[("direction", "inbound"), ("tls", "true")]).await;
        let tls_false = callee.metric("weir_requests_total", &[("direction", "inbound"), ("tls", "false")]).await;
        assert!(tls_true > 0.0, "mTLS requests are labelled tls=\"true\"");
        assert_eq!(tls_false, 0.0, "strict: no plaintext request got through");
        let conns = callee.metric("weir_connections_total", &[("direction", "inbound")]).await;
        std::fs::write(&callee_cfg, policy("spiffe://weir.local/ns/default/sa/payments")).expect("write");
        let v = callee.config_version().await;
        callee.signal(libc::SIGHUP);
        wait_until("callee reloaded", Duration::from_secs(10), || async { callee.config_version().await > v }).await;
        let rsp = get(caller.outbound()).await;
        assert_eq!(rsp.status, 403);
        assert_eq!(rsp.header("x-weir-error"), Some("unauthorized"));
        assert_eq!(
            callee.metric("weir_connections_total", &[("direction", "inbound")]).await,
            conns,
            "the denial must apply on the connection already open"
        );
        // Wildcards by namespace work too.
        std::fs::write(&callee_cfg, policy("spiffe://weir.local/ns/default/*")).expect("write");
        let v = callee.config_version().await;
        callee.signal(libc::SIGHUP);
        wait_until("callee reloaded", Duration::from_secs(10), || async { callee.config_version().await > v }).await;
        assert_eq!(get(caller.outbound()).await.status, 200);
        let _ = config::MESH_PERMISSIVE;
    })
    .await;
}

/// Proxies that get their identity from the control plane (`--token-file`), with 3-second
/// certificates renewed several times under a steady 200 rps: not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_control_plane_rotate_under_load_without_a_failed_request() {
    within(Duration::from_secs(120), "rotation under load", async {
        let dir = TestDir::new("mtls-rotate").expect("dir");
        let cp = weir_tests::control::ControlPlane::start_with(
            &dir.join("data"),
            dir.path(),
            &["--cert-ttl", "3s"],
        )
        .await;
        let token = |sa: &str| cp.token_file(dir.path(), sa);
        let (echo_token, orders_token) = (token("echo"), token("orders"));
        let app = apps::http::start("app").await;
        let meshed = |name: &str, token: &str| {
            Proxy::builder(name, dir.path())
                .service(name)
                .control_plane(&cp)
                .arg("--token-file")
                .arg(token)
        };
        // No MeshConfig: strict mTLS, the default.
        let callee = meshed("echo", &echo_token).app_addr(app.addr).start().await;
        let caller = meshed("orders", &orders_token).start().await;
        wait_until(
            "orders can call echo over mTLS",
            Duration::from_secs(20),
            || async { weir_tests::load::call(caller.outbound(), "echo").await.0 == 200 },
        )
        .await;

        let load =
            weir_tests::load::Load::start(caller.outbound(), "echo", Duration::from_secs(60));
        let (c0, e0) = (
            caller.metric("weir_identity_certificates_total", &[]).await,
            callee.metric("weir_identity_certificates_total", &[]).await,
        );
        // Three renewals of each side's 3 s certificate while the load runs.
        wait_until(
            "both proxies renewed their certificate 3 times",
            Duration::from_secs(40),
            || async {
                caller.metric("weir_identity_certificates_total", &[]).await >= c0 + 3.0
                    && callee.metric("weir_identity_certificates_total", &[]).await >= e0 + 3.0
            },
        )
        .await;
        let samples = load.finish().await;
        weir_tests::load::assert_no_failures(&samples, 500, "rotation");
        eprintln!(
            "rotation: {} requests, 0 failed, while each proxy renewed its certificate 3+ times",
            samples.len()
        );
        let seen = weir_tests::client::get_json(caller.outbound(), "echo", "/echo").await;
        assert_eq!(
            seen["headers"]["x-weir-client-id"][0],
            "spiffe://weir.local/ns/default/sa/orders"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    within(TEST_TIMEOUT, "expired certificate", async {
        let dir = TestDir::new("mtls-expired").expect("dir");
        let root = ca();
        let app = apps::http::start("app").await;
        let callee_id = identity(dir.path(), &root, ECHO, "echo");
        let callee = with_args(
            Proxy::builder("echo", dir.path()).service("echo").app_addr(app.addr),
            &callee_id,
        )
        .start()
        .await;
        // The caller's certificate expired yesterday.
        let expired = identity_with(dir.path(), &root, ORDERS, "orders", |p| {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(2);
            p.not_after = now - time::Duration::days(1);
        });
        let caller_cfg = dir.join("caller.yaml");
        std::fs::write(
            &caller_cfg,
            format!(
                "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: echo, namespace: default }}\nspec: {{ addresses: [\"{}\"], identity: \"{ECHO}\" }}\n",
                callee.inbound()
            ),
        )
        .expect("write");
        let caller = with_args(
            Proxy::builder("orders", dir.path()).service("orders").config(&caller_cfg),
            &expired,
        )
        .start()
        .await;
        let refused = callee.metric("weir_inbound_refused_total", &[]).await;
        let rsp = get(caller.outbound()).await;
        assert_eq!(rsp.status, 502, "{}", rsp.text());
        // In TLS 1.3 the client finishes its handshake before the server judges the client's
        // certificate, so the refusal surfaces either at connect or on the first stream.
        assert!(
            matches!(rsp.header("x-weir-error"), Some("connect-failure" | "reset")),
            "{:?}",
            rsp.header("x-weir-error")
        );
        assert_eq!(app.stats.requests(), 0, "nothing reached the app");
        wait_until("the callee counted the refusal", Duration::from_secs(10), || async {
            callee.metric("weir_inbound_refused_total", &[]).await > refused
        })
        .await;
    })
    .await;
}
