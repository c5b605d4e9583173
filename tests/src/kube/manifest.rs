//! Reading Kubernetes manifests (multi-document YAML, `List`) as JSON values.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// Every document of a multi-document YAML stream, `List` items flattened.
pub fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("YAML document {i}"))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            out.extend(
                value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        } else {
            out.push(value);
        }
    }
    Ok(out)
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
        .with_context(|| format!("no {kind} {name} in the manifests"))
}

/// The pod template of a workload (the object itself for a Pod).
pub fn pod_template(workload: &Value) -> anyhow::Result<&Value> {
    let kind = workload.get("kind").and_then(Value::as_str).unwrap_or("");
    let template = match kind {
        "Pod" => Some(workload),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            workload.pointer("/spec/template")
        }
        "CronJob" => workload.pointer("/spec/jobTemplate/spec/template"),
        other => bail!("{other} has no pod template"),
    };
    template.with_context(|| format!("{kind} without a pod template"))
}
