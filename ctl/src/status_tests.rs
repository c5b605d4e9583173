//! `weirctl status` output without a server: the summary, `-o wide` and `-o json`.

use super::*;

fn proxy(identity: &str, connected: bool) -> ProxyStatus {
    ProxyStatus {
        identity: identity.into(),
        service: "payments".into(),
        namespace: "shop".into(),
        inbound_address: "10.0.3.7:4143".into(),
        acked_version: 4,
        connected,
        connected_since_unix_ms: 1_740_830_645_000,
        replica: "weir-control-1".into(),
        ..Default::default()
    }
}

/// A current proxy of `service` in `shop`, number `i`.
fn member(service: &str, i: usize, version: u64) -> ProxyStatus {
    ProxyStatus {
        identity: format!("spiffe://weir.local/ns/shop/sa/{service}"),
        service: service.into(),
        namespace: "shop".into(),
        inbound_address: format!("10.{}.{}.{}:4143", i / 65_536, i / 256 % 256, i % 256),
        acked_version: version,
        connected: true,
        connected_since_unix_ms: 1_740_830_645_000,
        replica: "weir-control-0".into(),
        ..Default::default()
    }
}

fn nacking(mut p: ProxyStatus, version: u64) -> ProxyStatus {
    p.last_nack_version = version;
    p.last_nack_error = "ServicePolicy shop/x: spec.routes[0].backends: unknown service".into();
    p
}

fn assert_fits(text: &str) {
    for line in text.lines() {
        assert!(line.chars().count() <= MAX_WIDTH, "too wide: {line:?}");
    }
}

/// The SERVICE column of the summary's service rows, in order.
fn service_rows(text: &str) -> Vec<&str> {
    text.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The lines under `needs attention:`: the proxy rows, then `… and N more` if any.
fn attention_rows(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| *l != "needs attention:")
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn wide_fits() {
    let mut nacked = proxy(
        "spiffe://weir.local/ns/shop/sa/payments-service-account-with-a-long-name",
        true,
    );
    nacked.last_nack_version = 5;
    nacked.last_nack_error = "ServicePolicy shop/payments: spec.routes[0].backends: \
        unknown service payments-v3\nsecond error"
        .into();
    let response = StatusResponse {
        version: 5,
        proxies: vec![proxy("", false), nacked],
        ..Default::default()
    };
    let text = wide_table(&response);
    assert_eq!(
        text.lines().next(),
        Some("config version 5; 1 of 2 proxies connected; 1 NACKing, 0 behind, 1 disconnected")
    );
    assert_fits(&text);
    assert!(text.contains('…'));
    assert!(text.contains("4*"));
    assert!(text.contains("2025-03-01T12:04:05Z"));
    assert!(text.contains("weir-control-1"));
    let header = text.lines().nth(1).unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns.get(2), Some(&"ACKED"), "demo.sh reads column 3");
    assert_eq!(columns.last(), Some(&"REPLICA"));
    // The NACKing proxy first, though the server sent it second.
    assert!(
        text.lines()
            .nth(2)
            .is_some_and(|l| l.contains("v5: ServicePolicy"))
    );
    assert!(
        text.lines()
            .nth(3)
            .is_some_and(|l| l.starts_with("payments.shop"))
    );
    assert!(
        text.lines()
            .nth(3)
            .is_some_and(|l| l.contains("disconnected"))
    );
}

#[test]
fn summary_puts_problems_first() {
    let mut proxies = vec![
        member("audit", 1, 7),
        member("billing", 2, 7),
        member("billing", 3, 7),
        member("catalog", 4, 7),
        member("orders", 5, 7),
        member("orders", 6, 6),
        nacking(member("search", 7, 6), 7),
        member("search", 8, 7),
        member("zeta", 9, 7),
    ];
    proxies[3].connected = false;
    let response = StatusResponse {
        version: 7,
        proxies,
        ..Default::default()
    };
    let text = summary_table(&response);
    assert_fits(&text);
    assert_eq!(
        text.lines().next(),
        Some("config version 7; 8 of 9 proxies connected; 1 NACKing, 1 behind, 1 disconnected")
    );
    assert_eq!(
        service_rows(&text),
        [
            "SERVICE", "search", "orders", "catalog", "audit", "billing", "zeta"
        ]
    );
    let orders = text.lines().find(|l| l.starts_with("orders"));
    assert!(
        orders.is_some_and(|l| l.contains("7 (1), 6* (1)")),
        "{text}"
    );
    let search = text.lines().find(|l| l.starts_with("search"));
    assert!(
        search.is_some_and(|l| l.trim_end().ends_with('1')),
        "{text}"
    );
    // The disconnected catalog proxy's ACK is not counted.
    let catalog = text.lines().find(|l| l.starts_with("catalog"));
    assert!(catalog.is_some_and(|l| l.contains(" - ")), "{text}");

    let attention = attention_rows(&text);
    assert_eq!(attention.len(), 3, "{text}");
    assert!(attention[0].contains("sa/search") && attention[0].contains("v7: ServicePolicy"));
    assert!(attention[1].contains("sa/orders") && attention[1].contains("6*"));
    assert!(attention[2].contains("sa/catalog") && attention[2].contains("disconnected"));
    assert!(!text.contains("more: weirctl status -o wide"));
    assert!(text.ends_with(
        "\nNACK errors:\n  1 proxy at v7: ServicePolicy shop/x: spec.routes[0].backends: \
         unknown service\n"
    ));
}

#[test]
fn nack_errors_are_grouped_and_capped() {
    let mut proxies: Vec<_> = (0..3).map(|i| nacking(member("web", i, 1), 2)).collect();
    for i in 0..6 {
        let mut p = member("api", 10 + i, 1);
        p.last_nack_version = 2;
        p.last_nack_error = format!("ServicePolicy shop/api: error {i}\nand a second line");
        proxies.push(p);
    }
    let response = StatusResponse {
        version: 2,
        proxies,
        ..Default::default()
    };
    let text = summary_table(&response);
    assert_fits(&text);
    let errors: Vec<&str> = text.lines().skip_while(|l| *l != "NACK errors:").collect();
    assert_eq!(errors.len(), 1 + 5 + 1, "{text}");
    assert!(
        errors[1].starts_with("  3 proxies at v2: ServicePolicy shop/x"),
        "{text}"
    );
    assert_eq!(
        errors[2],
        "  1 proxy at v2: ServicePolicy shop/api: error 0; and a second line"
    );
    assert_eq!(errors[6], "  … and 2 more: weirctl status -o json");
}

#[test]
fn healthy_mesh_has_no_attention_list() {
    let response = StatusResponse {
        version: 3,
        proxies: vec![member("web", 1, 3), member("web", 2, 3)],
        ..Default::default()
    };
    assert_eq!(
        summary_table(&response),
        "config version 3; 2 of 2 proxies connected; 0 NACKing, 0 behind, 0 disconnected\n\
         SERVICE  NAMESPACE  PROXIES  CONNECTED  ACKED  NACKING\n\
         web      shop       2        2          3 (2)  0\n"
    );
    let empty = StatusResponse {
        version: 3,
        ..Default::default()
    };
    assert_eq!(
        summary_table(&empty),
        "config version 3; 0 of 0 proxies connected; 0 NACKing, 0 behind, 0 disconnected\n"
    );
}

#[test]
fn acked_lists_the_most_common_versions() {
    let mut proxies: Vec<_> = (0..10).map(|i| member("web", i, 9)).collect();
    proxies.extend((10..14).map(|i| member("web", i, 8)));
    proxies.extend([
        member("web", 14, 7),
        member("web", 15, 7),
        member("web", 16, 5),
    ]);
    proxies.push(member("web", 17, 4));
    let response = StatusResponse {
        version: 9,
        proxies,
        ..Default::default()
    };
    let text = summary_table(&response);
    assert!(text.contains("9 (10), 8* (4), 7* (2), …"), "{text}");
}

/// A mesh of 10,000 proxies in 50 services, 30 of them in trouble.
fn large_mesh() -> StatusResponse {
    let mut proxies: Vec<_> = (0..10_000)
        .map(|i| member(&format!("service-{:02}", i % 50), i, 42))
        .collect();
    for (n, p) in proxies.iter_mut().step_by(331).take(30).enumerate() {
        match n % 3 {
            0 => {
                *p = nacking(p.clone(), 42);
                p.acked_version = 41;
            }
            1 => p.acked_version = 41,
            _ => p.connected = false,
        }
    }
    StatusResponse {
        version: 42,
        proxies,
        ..Default::default()
    }
}

#[test]
fn ten_thousand_proxies_summarize_in_bounded_lines() {
    let response = large_mesh();
    let text = summary_table(&response);
    assert_fits(&text);
    // Header, service table (header + 50), blank, heading, proxy table (header + 20), "more",
    // blank, heading, the one NACK error.
    assert_eq!(
        text.lines().count(),
        1 + 51 + 1 + 1 + 21 + 1 + 1 + 1 + 1,
        "{text}"
    );
    assert!(text.starts_with(
        "config version 42; 9990 of 10000 proxies connected; 10 NACKing, 10 behind, 10 disconnected\n"
    ));
    assert!(
        text.contains("\n  10 proxies at v42: ServicePolicy"),
        "{text}"
    );
    let attention = attention_rows(&text);
    assert_eq!(attention.len(), 21, "{text}");
    assert!(
        attention[..10].iter().all(|l| l.contains("v42: ")),
        "{text}"
    );
    assert!(
        attention[10..20].iter().all(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(2..4) == Some(&["41*", "-"][..])
        }),
        "{text}"
    );
    assert_eq!(attention[20], "… and 10 more: weirctl status -o wide");
}

#[test]
fn wide_lists_every_proxy() {
    let response = large_mesh();
    let text = wide_table(&response);
    assert_fits(&text);
    assert_eq!(text.lines().count(), 2 + 10_000);
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert!(rows[..10].iter().all(|l| l.contains("v42: ")));
    assert!(rows[10..20].iter().all(|l| l.contains("41*")));
    assert!(rows[20..30].iter().all(|l| l.contains("disconnected")));
    // Then the rest by service: service-00's proxies before service-01's.
    assert!(rows[30].contains("sa/service-00"), "{}", rows[30]);
    assert!(rows[9_999].contains("sa/service-49"), "{}", rows[9_999]);
}

#[test]
fn json_keeps_fields_and_adds_summary() {
    let mut behind = proxy("spiffe://weir.local/ns/shop/sa/payments", true);
    behind.acked_version = 3;
    let response = StatusResponse {
        version: 4,
        proxies: vec![
            proxy("spiffe://weir.local/ns/shop/sa/payments", true),
            behind,
        ],
        replica: "weir-control-0".into(),
        ..Default::default()
    };
    let value: serde_json::Value =
        serde_json::from_str(&status_json(&response).expect("json")).expect("parse");
    assert_eq!(value["version"], 4);
    assert_eq!(value["replica"], "weir-control-0");
    // Behind first.
    assert_eq!(value["proxies"][0]["ackedVersion"], 3);
    assert_eq!(value["proxies"][1]["ackedVersion"], 4);
    let first = &value["proxies"][1];
    for field in [
        "identity",
        "service",
        "namespace",
        "address",
        "connected",
        "connectedSince",
        "proxyVersion",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    assert_eq!(first["replica"], "weir-control-1");
    assert!(first["lastNack"].is_null());
    assert!(value.get("warning").is_none());
    let summary = &value["summary"][0];
    assert_eq!(summary["service"], "payments");
    assert_eq!(summary["namespace"], "shop");
    assert_eq!(summary["proxies"], 2);
    assert_eq!(summary["connected"], 2);
    assert_eq!(summary["versions"]["4"], 1);
    assert_eq!(summary["versions"]["3"], 1);
    assert_eq!(summary["nacking"], 0);
    assert_eq!(summary["behind"], 1);
    assert_eq!(summary["disconnected"], 0);
    let warned = StatusResponse {
        warning: "etcd is away".into(),
        ..response
    };
    let value: serde_json::Value =
        serde_json::from_str(&status_json(&warned).expect("json")).expect("parse");
    assert_eq!(value["warning"], "etcd is away");
}
