//! Crate-level tests: the design example, invalid documents with their exact paths, round trips,
//! and loading from files.

use super::*;
use std::net::SocketAddr;

mod invalid;

/// Design §6, verbatim (both blocks, joined by `---`).
const DESIGN_EXAMPLE: &str = r#"apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments                 # the callee this policy governs
  timeouts: { request: 2s, perTry: 500ms, connect: 1s, idle: 60s }
  retries:
    attempts: 2                     # retries after the first try
    on: [connect-failure, refused-stream, reset, unavailable, "503"]
    backoff: { base: 25ms, max: 250ms }      # exponential, full jitter
    budget: { percent: 20, minPerSecond: 10 }  # retries ≤ 20% of requests + 10/s
    nonIdempotent: false            # POST/PATCH are never retried unless true
  circuitBreaker:
    consecutiveFailures: 5          # per endpoint: eject after 5 failures in a row
    failureRate: { percent: 50, minRequests: 20, window: 10s }
    ejection: { base: 30s, max: 5m, maxPercent: 50 }
  bulkhead: { maxConcurrent: 100, maxPending: 50, pendingTimeout: 100ms }
  rateLimit: { requestsPerSecond: 1000, burst: 200 }   # enforced by the callee's inbound
  fault:
    delay: { percent: 0, duration: 100ms }
    abort: { percent: 0, status: 503 }
  routes:
    - name: canary
      match: { pathPrefix: /api, headers: { x-canary: "true" } }
      backends: [ { service: payments-v2, weight: 100 } ]
    - name: default
      backends: [ { service: payments, weight: 90 }, { service: payments-v2, weight: 10 } ]
  authorization:
    mode: allowList                  # allowList | allowAll
    allow: [ "spiffe://weir.local/ns/shop/sa/orders" ]
---
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec:
  mtls: strict                       # strict | permissive
  tracing: { sampling: 0.05 }         # head sampling for requests that arrive without a decision
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments, namespace: shop }
spec:
  addresses: ["10.0.3.7:4143", "10.0.3.8:4143"]
  identity: spiffe://weir.local/ns/shop/sa/payments   # optional: expected peer identity (mTLS)
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn design() -> Vec<Document> {
    match parse_str("design.yaml", DESIGN_EXAMPLE) {
        Ok(docs) => docs,
        Err(errors) => panic!("design example rejected:\n{errors}"),
    }
}

#[test]
fn design_example_is_accepted() {
    let docs = design();
    assert_eq!(docs.len(), 3);
    let keys: Vec<_> = docs.iter().map(Document::key).collect();
    assert_eq!(
        keys,
        [
            "ServicePolicy shop/payments",
            "MeshConfig default",
            "Endpoints shop/payments"
        ]
    );

    let Document::ServicePolicy(sp) = &docs[0] else {
        panic!("expected ServicePolicy")
    };
    let spec = &sp.spec;
    assert_eq!(spec.service, "payments");
    let t = spec.timeouts.as_ref().expect("timeouts");
    assert_eq!(
        (t.request, t.per_try, t.connect, t.idle),
        (
            Some(ms(2000)),
            Some(ms(500)),
            Some(ms(1000)),
            Some(ms(60_000))
        )
    );
    let r = spec.retries.as_ref().expect("retries");
    assert_eq!(r.attempts, 2);
    assert_eq!(
        r.on,
        [
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Reset,
            RetryOn::Unavailable,
            RetryOn::Status(503)
        ]
    );
    assert_eq!(
        r.backoff,
        Some(Backoff {
            base: ms(25),
            max: ms(250)
        })
    );
    assert_eq!(
        r.budget,
        Some(RetryBudget {
            percent: 20,
            min_per_second: 10
        })
    );
    assert!(!r.non_idempotent);
    let cb = spec.circuit_breaker.as_ref().expect("circuit breaker");
    assert_eq!(cb.consecutive_failures, Some(5));
    assert_eq!(
        cb.failure_rate,
        Some(FailureRate {
            percent: 50,
            min_requests: 20,
            window: ms(10_000)
        })
    );
    assert_eq!(
        cb.ejection,
        Some(Ejection {
            base: ms(30_000),
            max: ms(300_000),
            max_percent: 50
        })
    );
    assert_eq!(
        spec.bulkhead,
        Some(Bulkhead {
            max_concurrent: 100,
            max_pending: 50,
            pending_timeout: ms(100)
        })
    );
    assert_eq!(
        spec.rate_limit,
        Some(RateLimit {
            requests_per_second: 1000,
            burst: 200
        })
    );
    let fault = spec.fault.as_ref().expect("fault");
    assert_eq!(
        fault.delay,
        Some(FaultDelay {
            percent: 0,
            duration: ms(100)
        })
    );
    assert_eq!(
        fault.abort,
        Some(FaultAbort {
            percent: 0,
            status: 503
        })
    );
    assert_eq!(spec.routes.len(), 2);
    let canary = &spec.routes[0];
    let m = canary.r#match.as_ref().expect("canary match");
    assert_eq!(m.path_prefix.as_deref(), Some("/api"));
    assert_eq!(m.headers.get("x-canary").map(String::as_str), Some("true"));
    assert_eq!(
        canary.backends,
        [Backend {
            service: "payments-v2".into(),
            weight: 100
        }]
    );
    assert_eq!(spec.routes[1].r#match, None);
    assert_eq!(spec.routes[1].backends[0].weight, 90);
    let authz = spec.authorization.as_ref().expect("authorization");
    assert_eq!(authz.mode, AuthzMode::AllowList);
    assert!(authz.allows("spiffe://weir.local/ns/shop/sa/orders"));
    assert!(!authz.allows("spiffe://weir.local/ns/shop/sa/cart"));

    let Document::MeshConfig(mc) = &docs[1] else {
        panic!("expected MeshConfig")
    };
    assert_eq!(
        mc.metadata,
        Metadata {
            name: "default".into(),
            namespace: String::new()
        }
    );
    assert_eq!(mc.spec.mtls, MtlsMode::Strict);
    assert_eq!(mc.spec.tracing.sampling, 0.05);

    let Document::Endpoints(ep) = &docs[2] else {
        panic!("expected Endpoints")
    };
    let addrs: Vec<SocketAddr> = ["10.0.3.7:4143", "10.0.3.8:4143"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    assert_eq!(ep.spec.addresses, addrs);
    assert_eq!(
        ep.spec.identity.as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/payments")
    );
}

#[test]
fn defaults_and_empty_documents() {
    let text = "---\napiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: cart }\nspec:\n  service: cart\n  retries: { attempts: 1, on: [503, 5xx, gateway-error] }\n  routes: [ { name: all, backends: [ { service: cart } ] } ]\n---\napiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: mesh, namespace: ignored }\n---\n# only a comment\n---\n";
    let docs = parse_str("d.yaml", text).expect("valid");
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].namespace(), "default");
    assert_eq!(docs[0].key(), "ServicePolicy default/cart");
    let Document::ServicePolicy(sp) = &docs[0] else {
        panic!("expected ServicePolicy")
    };
    let retries = sp.spec.retries.as_ref().expect("retries");
    assert_eq!(
        retries.on,
        [
            RetryOn::Status(503),
            RetryOn::Status5xx,
            RetryOn::GatewayError
        ]
    );
    assert_eq!(sp.spec.routes[0].backends[0].weight, 1);
    assert_eq!(docs[1].namespace(), "");
    assert_eq!(docs[1].key(), "MeshConfig mesh");
    let Document::MeshConfig(mc) = &docs[1] else {
        panic!("expected MeshConfig")
    };
    assert_eq!(
        mc.spec,
        MeshConfigSpec {
            mtls: MtlsMode::Strict,
            tracing: TracingSpec { sampling: 0.05 }
        }
    );
    assert_eq!(parse_str("e.yaml", "").expect("empty file"), []);
}

/// A bulkhead without a queue needs neither queue field (issue 17: `pendingTimeout` was
/// required even with `maxPending: 0`).
#[test]
fn bulkhead_queue_fields_default() {
    let text = "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: cart }\nspec:\n  service: cart\n  bulkhead: { maxConcurrent: 5 }\n";
    let docs = parse_str("b.yaml", text).expect("valid");
    let Document::ServicePolicy(sp) = &docs[0] else {
        panic!("expected ServicePolicy")
    };
    assert_eq!(
        sp.spec.bulkhead,
        Some(Bulkhead {
            max_concurrent: 5,
            max_pending: 0,
            pending_timeout: DEFAULT_PENDING_TIMEOUT,
        })
    );
    let queued = text.replace("maxConcurrent: 5", "maxConcurrent: 5, maxPending: 3");
    let docs = parse_str("b.yaml", &queued).expect("valid with a queue and no timeout");
    let Document::ServicePolicy(sp) = &docs[0] else {
        panic!("expected ServicePolicy")
    };
    let b = sp.spec.bulkhead.as_ref().expect("bulkhead");
    assert_eq!(
        (b.max_pending, b.pending_timeout),
        (3, Duration::from_secs(1))
    );
}

#[test]
fn yaml_round_trip() {
    let docs = design();
    let text = to_yaml(&docs);
    let again = parse_str("round-trip.yaml", &text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(again, docs);
    assert!(text.contains("apiVersion: weir/v1"), "{text}");
    assert!(text.contains("perTry: 500ms"), "{text}");
    assert!(!text.contains("null"), "None must be omitted:\n{text}");
}

#[test]
fn json_round_trip() {
    let docs = design();
    let json = serde_json::to_string(&docs).expect("serialises");
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(value[0]["apiVersion"], "weir/v1");
    assert_eq!(value[0]["kind"], "ServicePolicy");
    assert_eq!(
        value[0]["spec"]["circuitBreaker"]["ejection"]["maxPercent"],
        50
    );
    assert_eq!(value[0]["spec"]["routes"][0]["match"]["pathPrefix"], "/api");
    assert_eq!(
        value[1]["metadata"],
        serde_json::json!({ "name": "default" })
    );
    assert_eq!(value[2]["spec"]["addresses"][1], "10.0.3.8:4143");
    let back: Vec<Document> = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, docs);
    for doc in &back {
        assert_eq!(validate("json", doc), Ok(()));
    }

    // Deserialising checks shape only; `validate` applies the rules to documents that arrive as JSON.
    let json = r#"{"apiVersion":"weir/v1","kind":"MeshConfig","metadata":{"name":"m"},"spec":{"tracing":{"sampling":7}}}"#;
    let doc: Document = serde_json::from_str(json).expect("well-formed");
    let errors = validate("api", &doc).expect_err("sampling out of range");
    assert_eq!(
        errors.to_string(),
        "api: MeshConfig m: spec.tracing.sampling: must be 0.0..=1.0, got 7"
    );

    let err = serde_json::from_str::<Document>(
        r#"{"apiVersion":"weir/v1","kind":"Gateway","metadata":{"name":"x"}}"#,
    )
    .expect_err("unknown kind");
    assert!(
        err.to_string().contains("unknown kind \"Gateway\""),
        "{err}"
    );
    let err = serde_json::from_str::<Document>(
        r#"{"apiVersion":"weir/v2","kind":"MeshConfig","metadata":{"name":"x"}}"#,
    )
    .expect_err("bad apiVersion");
    assert!(err.to_string().contains("unsupported apiVersion"), "{err}");
}

#[test]
fn validate_set_checks_across_documents() {
    let mut docs = design();
    assert_eq!(validate_set(&docs), Ok(()));
    docs.push(docs[0].clone());
    let errors = validate_set(&docs).expect_err("duplicate");
    assert_eq!(
        errors.to_string(),
        "ServicePolicy shop/payments: metadata.name: duplicate: ServicePolicy shop/payments is already defined"
    );
}

/// A fresh directory under the system temp dir; removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("weir-policy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_paths_reads_files_and_directories() {
    let tmp = TempDir::new("load");
    let (sp, rest) = DESIGN_EXAMPLE.split_once("---\n").expect("three documents");
    tmp.write("b.yaml", rest);
    tmp.write("a.yml", sp);
    tmp.write("notes.txt", "not yaml");
    tmp.write(".hidden.yaml", "garbage: [");
    let docs = load_paths(&[&tmp.0]).unwrap_or_else(|e| panic!("{e}"));
    // a.yml sorts before b.yaml.
    assert_eq!(docs, design());

    let single = load_paths(&[tmp.0.join("a.yml")]).expect("one file");
    assert_eq!(single.len(), 1);

    // The same document from two places is a duplicate, reported against the second file.
    let dup = tmp.write("c.yaml", sp);
    let errors = load_paths(&[&tmp.0]).expect_err("duplicate across files");
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.0[0].source, dup.display().to_string());
    assert!(
        errors.0[0].reason.contains(&format!(
            "already defined in {}",
            tmp.0.join("a.yml").display()
        )),
        "{errors}"
    );

    let missing = tmp.0.join("missing.yaml");
    let errors = load_paths(&[&missing]).expect_err("missing file");
    assert_eq!(errors.0[0].source, missing.display().to_string());
    assert!(errors.0[0].reason.starts_with("cannot read: "), "{errors}");

    let empty = TempDir::new("empty");
    let errors = load_paths(&[&empty.0]).expect_err("empty directory");
    assert!(
        errors.to_string().contains("no *.yaml or *.yml files"),
        "{errors}"
    );

    assert_eq!(load_paths::<&str>(&[]), Ok(vec![]));
}

#[test]
fn endpoints_with_cluster_ips_and_ports() {
    let text = "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec:\n  clusterIPs: [\"10.96.0.12\", \"fd00::c\"]\n  ports: [{ port: 80, targetPort: 8080, name: http }, { port: 9090 }]\n";
    let docs = match parse_str("k8s.yaml", text) {
        Ok(d) => d,
        Err(e) => panic!("rejected:\n{e}"),
    };
    let Document::Endpoints(ep) = &docs[0] else {
        panic!("not Endpoints: {docs:?}")
    };
    assert!(ep.spec.addresses.is_empty());
    assert_eq!(ep.spec.cluster_ips.len(), 2);
    assert_eq!(ep.spec.ports[0].target(), 8080);
    assert_eq!(ep.spec.ports[1].target(), 9090);
    // Round trip keeps the YAML names.
    let json = serde_json::to_string(&docs[0]).unwrap_or_default();
    assert!(json.contains("\"clusterIPs\""), "{json}");
    assert!(json.contains("\"targetPort\":8080"), "{json}");
}
