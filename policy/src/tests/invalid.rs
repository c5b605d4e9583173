//! Invalid documents: each case names the exact field path and part of the reason.

use super::*;

pub(super) fn policy(spec: &str) -> String {
    format!(
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: payments, namespace: shop }}\nspec: {spec}\n"
    )
}

pub(super) fn errors_of(text: &str) -> Errors {
    match parse_str("t.yaml", text) {
        Ok(docs) => panic!("accepted:\n{text}\nas {docs:?}"),
        Err(errors) => errors,
    }
}

/// Asserts that exactly one error has `path`, and its reason contains `reason`.
fn assert_error(text: &str, path: &str, reason: &str) -> PolicyError {
    let errors = errors_of(text);
    let hits: Vec<_> = errors.iter().filter(|e| e.path == path).collect();
    match hits[..] {
        [hit] if hit.reason.contains(reason) => hit.clone(),
        _ => panic!(
            "expected one error at {path:?} containing {reason:?}; got:\n{errors}\nfor:\n{text}"
        ),
    }
}

#[test]
fn invalid_service_policies() {
    let cases: &[(&str, &str, &str)] = &[
        // types and unknown fields
        (
            "{ service: payments, retries: { attempts: two, on: [reset] } }",
            "spec.retries.attempts",
            "invalid type: string \"two\", expected u32",
        ),
        (
            "{ service: payments, timeouts: { request: 2s, total: 3s } }",
            "spec.timeouts.total",
            "unknown field `total`",
        ),
        (
            "{ service: payments, retry: {} }",
            "spec.retry",
            "unknown field `retry`",
        ),
        (
            "{ service: payments, routes: [ { name: a, backends: [ { service: b, wieght: 1 } ] } ] }",
            "spec.routes[0].backends[0].wieght",
            "unknown field `wieght`",
        ),
        (
            "{ timeouts: { request: 2s } }",
            "spec.service",
            "required field is missing",
        ),
        (
            "{ service: payments, timeouts: { request: 5 } }",
            "spec.timeouts.request",
            "expected a duration string",
        ),
        (
            "{ service: payments, retries: { attempts: 1, on: [reset, \"700\"] } }",
            "spec.retries.on[1]",
            "status code must be 100..=599, got 700",
        ),
        (
            "{ service: payments, retries: { attempts: 1, on: [sometimes] } }",
            "spec.retries.on[0]",
            "expected a retry condition",
        ),
        // durations
        (
            "{ service: payments, timeouts: { request: 10 parsecs } }",
            "spec.timeouts.request",
            "unknown unit \"parsecs\"",
        ),
        (
            "{ service: payments, timeouts: { request: -1s } }",
            "spec.timeouts.request",
            "cannot be negative",
        ),
        (
            "{ service: payments, timeouts: { request: \"\" } }",
            "spec.timeouts.request",
            "empty duration",
        ),
        (
            "{ service: payments, timeouts: { connect: 0s } }",
            "spec.timeouts.connect",
            "must be greater than 0s",
        ),
        (
            "{ service: payments, timeouts: { request: 1s, perTry: 2s } }",
            "spec.timeouts.perTry",
            "must not exceed request (1s), got 2s",
        ),
        (
            "{ service: payments, retries: { attempts: 1, on: [reset], backoff: { base: 1s, max: 250ms } } }",
            "spec.retries.backoff.base",
            "must not exceed max (250ms), got 1s",
        ),
        (
            "{ service: payments, circuitBreaker: { consecutiveFailures: 5, ejection: { base: 1m, max: 30s, maxPercent: 10 } } }",
            "spec.circuitBreaker.ejection.base",
            "must not exceed max",
        ),
        (
            "{ service: payments, bulkhead: { maxConcurrent: 1, maxPending: 1, pendingTimeout: 0s } }",
            "spec.bulkhead.pendingTimeout",
            "greater than 0s",
        ),
        // ranges
        (
            "{ service: payments, retries: { attempts: 2, on: [reset], budget: { percent: 250 } } }",
            "spec.retries.budget.percent",
            "must be 0..=100, got 250",
        ),
        (
            "{ service: payments, retries: { attempts: 50, on: [reset] } }",
            "spec.retries.attempts",
            "must be 0..=10, got 50",
        ),
        (
            "{ service: payments, retries: { attempts: 2 } }",
            "spec.retries.on",
            "at least one retry condition",
        ),
        (
            "{ service: payments, retries: { attempts: 2, on: [reset, reset] } }",
            "spec.retries.on[1]",
            "listed twice",
        ),
        (
            "{ service: payments, circuitBreaker: { failureRate: { percent: 101, minRequests: 1, window: 10s } } }",
            "spec.circuitBreaker.failureRate.percent",
            "must be 1..=100, got 101",
        ),
        (
            "{ service: payments, circuitBreaker: { ejection: { base: 1s, max: 2s, maxPercent: 10 } } }",
            "spec.circuitBreaker",
            "set consecutiveFailures or failureRate",
        ),
        (
            "{ service: payments, circuitBreaker: { consecutiveFailures: 5, ejection: { base: 1s, max: 2s, maxPercent: 150 } } }",
            "spec.circuitBreaker.ejection.maxPercent",
            "must be 0..=100, got 150",
        ),
        (
            "{ service: payments, fault: { abort: { percent: 10, status: 99 } } }",
            "spec.fault.abort.status",
            "200..=599, got 99",
        ),
        (
            "{ service: payments, fault: { delay: { percent: 101, duration: 1s } } }",
            "spec.fault.delay.percent",
            "must be 0..=100, got 101",
        ),
        (
            "{ service: payments, bulkhead: { maxConcurrent: 0, maxPending: 0, pendingTimeout: 1s } }",
            "spec.bulkhead.maxConcurrent",
            "at least 1, got 0",
        ),
        (
            "{ service: payments, rateLimit: { requestsPerSecond: 0, burst: 10 } }",
            "spec.rateLimit.requestsPerSecond",
            "at least 1, got 0",
        ),
        // names
        ("{ service: Payments }", "spec.service", "DNS-1123 label"),
        // routes
        (
            "{ service: payments, routes: [ { name: a, backends: [ { service: b } ] }, { name: z, backends: [ { service: b, weight: 0 }, { service: c, weight: 0 } ] } ] }",
            "spec.routes[1].backends",
            "weights sum to 0",
        ),
        (
            "{ service: payments, routes: [ { name: a, backends: [] } ] }",
            "spec.routes[0].backends",
            "at least one backend",
        ),
        (
            "{ service: payments, routes: [ { name: a } ] }",
            "spec.routes[0].backends",
            "at least one backend",
        ),
        (
            "{ service: payments, routes: [ { name: a, match: { pathExact: /x, pathPrefix: /y }, backends: [ { service: b } ] } ] }",
            "spec.routes[0].match",
            "not both",
        ),
        (
            "{ service: payments, routes: [ { name: a, match: { pathPrefix: api }, backends: [ { service: b } ] } ] }",
            "spec.routes[0].match.pathPrefix",
            "must start with '/', got \"api\"",
        ),
        (
            "{ service: payments, routes: [ { name: a, match: { method: get }, backends: [ { service: b } ] } ] }",
            "spec.routes[0].match.method",
            "uppercase HTTP method",
        ),
        (
            "{ service: payments, routes: [ { name: a, match: { headers: { X-Canary: \"1\" } }, backends: [ { service: b } ] } ] }",
            "spec.routes[0].match.headers",
            "lowercase HTTP tokens, got \"X-Canary\"",
        ),
        (
            "{ service: payments, routes: [ { name: a, backends: [ { service: b } ] }, { name: a, backends: [ { service: b } ] } ] }",
            "spec.routes[1].name",
            "used twice",
        ),
        (
            "{ service: payments, routes: [ { name: a, backends: [ { service: b_c } ] } ] }",
            "spec.routes[0].backends[0].service",
            "DNS-1123 label",
        ),
        // authorization
        (
            "{ service: payments, authorization: { mode: allowList, allow: [ \"spiffe://weir.local/shop/orders\" ] } }",
            "spec.authorization.allow[0]",
            "must be a SPIFFE id",
        ),
        (
            "{ service: payments, authorization: { mode: allowList, allow: [ \"spiffe://weir.local/ns/*\" ] } }",
            "spec.authorization.allow[0]",
            "end in /*",
        ),
        (
            "{ service: payments, authorization: { mode: allowAll, allow: [ \"spiffe://weir.local/ns/shop/*\" ] } }",
            "spec.authorization.allow",
            "must be empty when mode is allowAll",
        ),
        (
            "{ service: payments, authorization: { mode: denyAll } }",
            "spec.authorization.mode",
            "unknown variant `denyAll`",
        ),
        // dependencies
        (
            "{ service: payments, dependencies: [ ledger, fraud.risk, a.b.c ] }",
            "spec.dependencies[2]",
            "must be `name` or `name.namespace`",
        ),
        (
            "{ service: payments, dependencies: [ Ledger ] }",
            "spec.dependencies[0]",
            "DNS-1123 label",
        ),
    ];
    for (spec, path, reason) in cases {
        let err = assert_error(&policy(spec), path, reason);
        assert_eq!(err.source, "t.yaml");
        assert_eq!(
            err.document.as_deref(),
            Some("ServicePolicy shop/payments"),
            "{err}"
        );
    }
}

#[test]
fn error_display_matches_design() {
    let text = policy(
        "{ service: payments, retries: { attempts: 2, on: [reset], budget: { percent: 250 } } }",
    );
    let err = parse_str("payments.yaml", &text).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "payments.yaml: ServicePolicy shop/payments: spec.retries.budget.percent: must be 0..=100, got 250"
    );
}

#[test]
fn invalid_envelopes() {
    let doc = |rest: &str| format!("apiVersion: weir/v1\n{rest}");
    let cases: &[(String, &str, &str)] = &[
        (
            doc("kind: Gateway\nmetadata: { name: a }\n"),
            "kind",
            "unknown kind \"Gateway\"; expected one of MeshConfig, ServicePolicy, Endpoints",
        ),
        (doc("metadata: { name: a }\n"), "kind", "missing"),
        (
            "apiVersion: weir/v2\nkind: MeshConfig\nmetadata: { name: a }\n".into(),
            "apiVersion",
            "unsupported apiVersion \"weir/v2\"; expected weir/v1",
        ),
        (
            "kind: MeshConfig\nmetadata: { name: a }\n".into(),
            "apiVersion",
            "missing; expected weir/v1",
        ),
        (
            doc("kind: MeshConfig\nmetadata: { namespace: shop }\n"),
            "metadata.name",
            "missing",
        ),
        (doc("kind: MeshConfig\n"), "metadata", "missing"),
        (
            doc("kind: MeshConfig\nmetadata: { name: a }\nstatus: {}\n"),
            "status",
            "unknown field `status`",
        ),
        (
            doc("kind: MeshConfig\nmetadata: { name: a, labels: {} }\n"),
            "metadata.labels",
            "unknown field `labels`",
        ),
        (
            doc("kind: ServicePolicy\nmetadata: { name: a }\n"),
            "spec",
            "required field is missing",
        ),
        ("just a string\n".into(), "", "expected a mapping"),
    ];
    for (text, path, reason) in cases {
        assert_error(text, path, reason);
    }
    let err = assert_error(
        &doc("kind: Gateway\nmetadata: { name: a }\n"),
        "kind",
        "unknown kind",
    );
    assert_eq!(err.document.as_deref(), Some("document 1"));
}

#[test]
fn invalid_names_mesh_config_and_endpoints() {
    let ep = |spec: &str| {
        format!(
            "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: payments, namespace: shop }}\nspec: {spec}\n"
        )
    };
    let cases: &[(String, &str, &str)] = &[
        ("apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: Pay_ments }\n".into(), "metadata.name", "DNS-1123 label (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit), got \"Pay_ments\""),
        ("apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: a, namespace: -shop }\nspec: { addresses: [\"1.2.3.4:80\"] }\n".into(), "metadata.namespace", "DNS-1123"),
        ("apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\nspec: { tracing: { sampling: 1.5 } }\n".into(), "spec.tracing.sampling", "must be 0.0..=1.0, got 1.5"),
        ("apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\nspec: { mtls: mutual }\n".into(), "spec.mtls", "unknown variant `mutual`, expected `strict` or `permissive`"),
        (ep(r#"{ addresses: ["10.0.3.7:4143", "foo"] }"#), "spec.addresses[1]", "not an ip:port address: \"foo\""),
        (ep(r#"{ addresses: ["10.0.3.7"] }"#), "spec.addresses[0]", "not an ip:port address: \"10.0.3.7\""),
        (ep("{ addresses: [] }"), "spec.addresses", "at least one"),
        (ep(r#"{ addresses: ["10.0.3.7:80", "10.0.3.7:80"] }"#), "spec.addresses[1]", "listed twice"),
        (ep(r#"{ addresses: ["10.0.3.7:0"] }"#), "spec.addresses[0]", "port must not be 0"),
        (ep(r#"{ addresses: ["10.0.3.7:80"], identity: "spiffe://weir.local/payments" }"#), "spec.identity", "must be a SPIFFE id spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, got \"spiffe://weir.local/payments\""),
        (ep(r#"{ addresses: ["10.0.3.7:80"], identity: "spiffe://weir.local/ns/shop/*" }"#), "spec.identity", "must be a SPIFFE id"),
        (ep(r#"{ clusterIPs: ["10.96.0.1", "10.96.0.1"] }"#), "spec.clusterIPs[1]", "listed twice"),
        (ep(r#"{ clusterIPs: ["127.0.0.1"] }"#), "spec.clusterIPs[0]", "routable unicast"),
        (ep(r#"{ clusterIPs: ["10.96.0.300"] }"#), "spec.clusterIPs[0]", "invalid IP address syntax"),
        (ep(r#"{ clusterIPs: ["10.96.0.1"], ports: [{ port: 80 }, { port: 80, targetPort: 8080 }] }"#), "spec.ports[1].port", "listed twice"),
        (ep(r#"{ clusterIPs: ["10.96.0.1"], ports: [{ port: 80, targetPort: 0 }] }"#), "spec.ports[0].targetPort", "1..=65535"),
        (ep(r#"{ addresses: ["10.0.3.7:80"], ports: [{ port: 80 }] }"#), "spec.ports", "list clusterIPs too"),
        (ep(r#"{ clusterIPs: ["10.96.0.1"], ports: [{ port: 80, target: 8080 }] }"#), "spec.ports[0].target", "unknown field `target`"),
    ];
    for (text, path, reason) in cases {
        assert_error(text, path, reason);
    }
}

#[test]
fn duplicates_in_one_file() {
    let one = "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.0.1:80\"] }\n";
    let other_ns = one.replace("shop", "other");
    let text = format!("{one}---\n{other_ns}---\n{one}");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "metadata.name");
    assert_eq!(
        errors.0[0].document.as_deref(),
        Some("Endpoints shop/payments")
    );
    assert!(
        errors.0[0]
            .reason
            .contains("duplicate: Endpoints shop/payments is already defined in t.yaml"),
        "{errors}"
    );
    // Same name, different kind: no conflict.
    let sp = policy("{ service: payments }");
    assert!(parse_str("t.yaml", &format!("{one}---\n{sp}")).is_ok());
}

#[test]
fn two_mesh_configs() {
    let text = "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\n---\napiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: other }\n";
    let err = assert_error(
        text,
        "",
        "only one MeshConfig is allowed; MeshConfig default is already defined",
    );
    assert_eq!(err.document.as_deref(), Some("MeshConfig other"));
}

#[test]
fn two_policies_for_one_service() {
    let text = "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: a, namespace: shop }\nspec: { service: payments }\n---\napiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: b, namespace: shop }\nspec: { service: payments }\n";
    let err = assert_error(
        text,
        "spec.service",
        "service shop/payments is already governed by ServicePolicy shop/a",
    );
    assert_eq!(err.document.as_deref(), Some("ServicePolicy shop/b"));
}

#[test]
fn yaml_syntax_error_names_line() {
    let text = "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\n---\napiVersion: weir/v1\nkind: Endpoints\n  metadata: x\n";
    let err = assert_error(text, "", "invalid YAML at line 7 column 11");
    assert_eq!(err.document.as_deref(), Some("document 2"));
    assert!(
        err.to_string()
            .starts_with("t.yaml: document 2: invalid YAML at line 7 column 11: "),
        "{err}"
    );
    // Mark written once, not repeated after the message.
    assert_eq!(err.reason.matches("line 7 column 11").count(), 1, "{err}");
}

#[test]
fn every_error_in_a_file_is_reported() {
    let text = format!(
        "{}---\napiVersion: weir/v1\nkind: Gateway\nmetadata: {{ name: x }}\n---\n{}---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: e }}\nspec: {{ addresses: [foo] }}\n",
        policy(
            "{ service: payments, timeouts: { request: 1s, perTry: 2s }, retries: { attempts: 1, on: [reset], budget: { percent: 250 } } }"
        ),
        "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\nspec: { tracing: { sampling: 2.0 } }\n",
    );
    let errors = errors_of(&text);
    let found: Vec<_> = errors
        .iter()
        .map(|e| (e.document.as_deref().unwrap_or(""), e.path.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("ServicePolicy shop/payments", "spec.timeouts.perTry"),
            ("ServicePolicy shop/payments", "spec.retries.budget.percent"),
            ("document 2", "kind"),
            ("MeshConfig default", "spec.tracing.sampling"),
            ("Endpoints default/e", "spec.addresses[0]"),
        ],
        "{errors}"
    );
    assert_eq!(errors.to_string().lines().count(), 5);
}
