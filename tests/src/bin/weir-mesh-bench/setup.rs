//! Before measuring: a MeshConfig and one ServicePolicy per service applied, then every proxy
//! connected in bounded batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use weir_proto::admin::v1::ApplyRequest;
use weir_proto::admin::v1::admin_client::AdminClient;
use weir_tests::bench::authed;

use crate::proxy::{Dial, NAMESPACE, Shared, Spec, address, open};
use crate::svc;

/// Documents per Apply: a whole mesh's policies in one request would be one huge YAML parse.
const APPLY_CHUNK: usize = 100;

pub fn policy_yaml(service: &str, request_ms: u32) -> String {
    format!(
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{name: {service}, namespace: {NAMESPACE}}}\n\
         spec: {{service: {service}, timeouts: {{request: {request_ms}ms}}}}\n"
    )
}

pub fn mesh_yaml(sampling: f64) -> String {
    format!(
        "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: {{name: default}}\n\
         spec: {{mtls: strict, tracing: {{sampling: {sampling:.3}}}}}\n"
    )
}

/// The MeshConfig and every service's policy, so the measured changes are updates.
pub async fn apply_baseline(
    admin: &mut AdminClient<Channel>,
    token: &str,
    services: usize,
) -> anyhow::Result<()> {
    let mut docs: Vec<String> = vec![mesh_yaml(0.05)];
    docs.extend((0..services).map(|s| policy_yaml(&svc(s), 1000)));
    for chunk in docs.chunks(APPLY_CHUNK) {
        let request = authed(
            ApplyRequest {
                yaml: chunk.join("---\n"),
                source: "weir-mesh-bench setup".into(),
                dry_run: false,
            },
            token,
        )?;
        let response = tokio::time::timeout(Duration::from_secs(60), admin.apply(request))
            .await
            .context("Admin.Apply of the baseline timed out")?
            .context("Admin.Apply of the baseline (is the token right?)")?
            .into_inner();
        if response.results.len() != chunk.len() {
            bail!(
                "baseline apply: {} results for {} documents",
                response.results.len(),
                chunk.len()
            );
        }
    }
    Ok(())
}

/// Opens `slots` (address number = slot index), at most `batch` at once, until `deadline`.
pub async fn connect_all(
    slots: &[usize],
    specs: &[Spec],
    dial: &Dial,
    shared: &Arc<Shared>,
    batch: usize,
    deadline: Instant,
) -> Vec<(usize, Result<JoinHandle<()>, String>)> {
    let opens = futures_util::stream::iter(slots.iter().copied())
        .map(|i| async move {
            let left = deadline.saturating_duration_since(Instant::now());
            let opened =
                tokio::time::timeout(left, open(i, 1, &specs[i], address(i as u64), dial, shared))
                    .await;
            let result = match opened {
                Ok(Ok(handle)) => Ok(handle),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(_) => Err("connect phase timed out".to_string()),
            };
            (i, result)
        })
        .buffer_unordered(batch.max(1));
    opens.collect().await
}
