//! Commands about the running mesh besides `status`: endpoints, version.

use std::process::ExitCode;

use weir_proto::admin::v1::{EndpointsRequest, ServiceEndpoints, VersionRequest};

use super::output::{self, MAX_WIDTH, Table, or_dash};
use super::{ListFormat, Outcome, Target};

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
        ListFormat::Table | ListFormat::Wide if services.is_empty() => {
            eprintln!("No endpoints found.")
        }
        ListFormat::Table | ListFormat::Wide => output::emit(&endpoints_table(&services))?,
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
