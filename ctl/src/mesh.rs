//! Commands about the running mesh: status, endpoints, version.

use std::process::ExitCode;

use weir_proto::admin::v1::{
    EndpointsRequest, ProxyStatus, ServiceEndpoints, StatusRequest, StatusResponse, VersionRequest,
};

use super::output::{self, MAX_WIDTH, Table};
use super::{ListFormat, Outcome, Target};

// === status ===

pub async fn status(target: &Target, format: ListFormat) -> Outcome {
    let mut client = target.connect().await?;
    let response = client
        .status(StatusRequest {})
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    // On stderr, so scripts reading the table or the JSON are not thrown off.
    if !response.warning.is_empty() {
        eprintln!("warning: {}", response.warning);
    }
    match format {
        ListFormat::Table => output::emit(&status_table(&response))?,
        ListFormat::Json => output::emit(&status_json(&response)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A header with the current version, then one row per proxy. ACKED is marked `*` when the proxy
/// is behind, the usual sign of a NACK or a slow proxy. REPLICA comes last: scripts read ACKED
/// as the third column.
fn status_table(response: &StatusResponse) -> String {
    let connected = response.proxies.iter().filter(|p| p.connected).count();
    let mut out = format!(
        "config version {}; {connected} of {} proxies connected\n",
        response.version,
        response.proxies.len()
    );
    if response.proxies.is_empty() {
        return out;
    }
    let mut table = Table::new(&[
        "IDENTITY",
        "ADDRESS",
        "ACKED",
        "NACK",
        "CONNECTED SINCE",
        "REPLICA",
    ]);
    for p in &response.proxies {
        let acked = if p.acked_version < response.version {
            format!("{}*", p.acked_version)
        } else {
            p.acked_version.to_string()
        };
        let since = if p.connected {
            output::timestamp(p.connected_since_unix_ms)
        } else {
            "disconnected".to_string()
        };
        table.row([
            proxy_name(p),
            or_dash(&p.inbound_address),
            acked,
            nack(p),
            since,
            or_dash(&p.replica),
        ]);
    }
    out.push_str(&table.render(MAX_WIDTH));
    out
}

/// The SPIFFE identity, or `service.namespace` for a proxy that has none (no mTLS yet).
fn proxy_name(p: &ProxyStatus) -> String {
    match (
        p.identity.as_str(),
        p.service.as_str(),
        p.namespace.as_str(),
    ) {
        (id, _, _) if !id.is_empty() => id.to_string(),
        ("", "", _) => "-".to_string(),
        ("", service, "") => service.to_string(),
        (_, service, namespace) => format!("{service}.{namespace}"),
    }
}

fn nack(p: &ProxyStatus) -> String {
    if p.last_nack_error.is_empty() && p.last_nack_version == 0 {
        "-".to_string()
    } else {
        format!("v{}: {}", p.last_nack_version, p.last_nack_error)
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

fn status_json(response: &StatusResponse) -> anyhow::Result<String> {
    let proxies: Vec<_> = response
        .proxies
        .iter()
        .map(|p| {
            serde_json::json!({
                "identity": p.identity,
                "service": p.service,
                "namespace": p.namespace,
                "address": p.inbound_address,
                "ackedVersion": p.acked_version,
                "lastNack": (p.last_nack_version != 0 || !p.last_nack_error.is_empty()).then(|| {
                    serde_json::json!({ "version": p.last_nack_version, "error": p.last_nack_error })
                }),
                "connected": p.connected,
                "connectedSince": p.connected.then(|| output::timestamp(p.connected_since_unix_ms)),
                "proxyVersion": p.proxy_version,
                "replica": p.replica,
            })
        })
        .collect();
    let mut out = serde_json::json!({
        "version": response.version,
        "replica": response.replica,
        "proxies": proxies,
    });
    if !response.warning.is_empty() {
        out["warning"] = response.warning.clone().into();
    }
    output::pretty_json(&out)
}

// === endpoints ===

pub async fn endpoints(
    target: &Target,
    service: Option<&str>,
    namespace: Option<&str>,
    format: ListFormat,
) -> Outcome {
    let mut client = target.connect().await?;
    let services = client
        .endpoints(EndpointsRequest {
            service: service.unwrap_or_default().into(),
            namespace: namespace.unwrap_or_default().into(),
        })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner()
        .services;
    match format {
        ListFormat::Table if services.is_empty() => eprintln!("No endpoints found."),
        ListFormat::Table => output::emit(&endpoints_table(&services))?,
        ListFormat::Json => output::emit(&endpoints_json(&services)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per address; a known service without any gets a `<none>` row so it does not vanish.
fn endpoints_table(services: &[ServiceEndpoints]) -> String {
    let mut table = Table::new(&["NAMESPACE", "SERVICE", "ADDRESS", "IDENTITY", "SOURCE"]);
    for s in services {
        if s.endpoints.is_empty() {
            table.row([or_dash(&s.namespace), s.service.clone(), "<none>".into()]);
        }
        for e in &s.endpoints {
            table.row([
                or_dash(&s.namespace),
                s.service.clone(),
                e.address.clone(),
                or_dash(&e.identity),
                e.source.clone(),
            ]);
        }
    }
    table.render(MAX_WIDTH)
}

fn endpoints_json(services: &[ServiceEndpoints]) -> anyhow::Result<String> {
    let items: Vec<_> = services
        .iter()
        .map(|s| {
            let endpoints: Vec<_> = s
                .endpoints
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.address, "identity": e.identity, "source": e.source,
                    })
                })
                .collect();
            serde_json::json!({
                "service": s.service, "namespace": s.namespace, "endpoints": endpoints,
            })
        })
        .collect();
    output::pretty_json(&items)
}

// === version ===

/// Prints the client version first so it is shown even when the server cannot be asked.
pub async fn version(target: &Target) -> Outcome {
    output::emit(&format!("client: weirctl {}\n", env!("CARGO_PKG_VERSION")))?;
    // No token required up front: a server may answer Version anonymously.
    let mut client = target.connect_anonymous().await?;
    let response = client
        .version(VersionRequest {})
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    output::emit(&format!("server: weir-control {}\n", response.version))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use weir_proto::admin::v1::Endpoint;

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

    #[test]
    fn status_table_fits() {
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
            proxies: vec![nacked, proxy("", false)],
            ..Default::default()
        };
        let text = status_table(&response);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("config version 5; 1 of 2 proxies connected")
        );
        for line in text.lines() {
            assert!(line.chars().count() <= MAX_WIDTH, "too wide: {line:?}");
        }
        assert!(text.contains("v5: ServicePolicy"));
        assert!(text.contains('…'));
        assert!(text.contains("4*"));
        assert!(text.contains("payments.shop"));
        assert!(text.contains("disconnected"));
        assert!(text.contains("2025-03-01T12:04:05Z"));
        let header = text.lines().nth(1).unwrap_or_default();
        let columns: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(columns.get(2), Some(&"ACKED"), "demo.sh reads column 3");
        assert_eq!(columns.last(), Some(&"REPLICA"));
        assert!(text.contains("weir-control-1"));
    }

    #[test]
    fn status_json_shape() {
        let response = StatusResponse {
            version: 4,
            proxies: vec![proxy("spiffe://weir.local/ns/shop/sa/payments", true)],
            replica: "weir-control-0".into(),
            ..Default::default()
        };
        let value: serde_json::Value =
            serde_json::from_str(&status_json(&response).expect("json")).expect("parse");
        assert_eq!(value["version"], 4);
        assert_eq!(value["replica"], "weir-control-0");
        assert_eq!(value["proxies"][0]["ackedVersion"], 4);
        assert_eq!(value["proxies"][0]["replica"], "weir-control-1");
        assert!(value["proxies"][0]["lastNack"].is_null());
        assert!(value.get("warning").is_none());
        let warned = StatusResponse {
            warning: "etcd is away".into(),
            ..response
        };
        let value: serde_json::Value =
            serde_json::from_str(&status_json(&warned).expect("json")).expect("parse");
        assert_eq!(value["warning"], "etcd is away");
    }

    #[test]
    fn endpoints_rows() {
        let services = [
            ServiceEndpoints {
                service: "payments".into(),
                namespace: "shop".into(),
                endpoints: vec![Endpoint {
                    address: "10.0.3.7:4143".into(),
                    identity: "spiffe://weir.local/ns/shop/sa/payments".into(),
                    source: "registered".into(),
                }],
            },
            ServiceEndpoints {
                service: "legacy".into(),
                namespace: "shop".into(),
                endpoints: vec![],
            },
        ];
        let text = endpoints_table(&services);
        assert!(text.starts_with("NAMESPACE  SERVICE   ADDRESS"));
        assert!(text.contains("registered"));
        assert!(text.contains("legacy    <none>"));
    }
}
