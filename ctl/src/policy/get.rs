//! `weirctl get`: stored documents as a table, re-applicable YAML or JSON with revisions.

use std::process::ExitCode;

use anyhow::bail;
use tonic::Code;
use weir_proto::admin::v1::{GetRequest, Object};

use crate::output::{self, MAX_WIDTH, Table, key};
use crate::{DocFormat, Kind, Outcome, Target};

pub async fn get(
    target: &Target,
    kind: Kind,
    name: Option<&str>,
    namespace: Option<&str>,
    format: DocFormat,
) -> Outcome {
    // Without -n a name is looked up in every namespace; `ns/name` or -n narrows it.
    let (namespace, name) = match name {
        Some(name) if name.contains('/') || namespace.is_some() => kind.object(name, namespace)?,
        Some(name) => (String::new(), name.to_string()),
        None => (
            namespace
                .filter(|_| kind.namespaced())
                .unwrap_or_default()
                .to_string(),
            String::new(),
        ),
    };
    let mut client = target.connect().await?;
    let request = GetRequest {
        kind: kind.as_str().into(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let objects = match client.get(request).await {
        Ok(response) => response.into_inner().objects,
        Err(status) if status.code() == Code::NotFound => Vec::new(),
        Err(status) => return Err(target.explain(&status)),
    };
    let objects: Vec<Object> = objects.into_iter().filter(|o| !o.deleted).collect();
    if objects.is_empty() && !name.is_empty() {
        let where_ = if namespace.is_empty() && kind.namespaced() {
            " in any namespace"
        } else {
            ""
        };
        bail!(
            "{} not found{where_}",
            key(kind.as_str(), &namespace, &name)
        );
    }
    match format {
        DocFormat::Table if objects.is_empty() => eprintln!("No {kind} found."),
        DocFormat::Table => output::emit(&objects_table(&objects))?,
        DocFormat::Yaml => output::emit(&objects_yaml(&objects)?)?,
        DocFormat::Json => output::emit(&output::objects_json(&objects)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn objects_table(objects: &[Object]) -> String {
    let mut table = Table::new(&["KIND", "NAMESPACE", "NAME", "REVISION", "UPDATED"]);
    for o in objects {
        let namespace = if o.namespace.is_empty() {
            "-"
        } else {
            &o.namespace
        };
        table.row([
            o.kind.clone(),
            namespace.to_string(),
            o.name.clone(),
            o.revision.to_string(),
            output::timestamp(o.updated_unix_ms),
        ]);
    }
    table.render(MAX_WIDTH)
}

/// Multi-document YAML that `apply -f` accepts again.
pub(super) fn objects_yaml(objects: &[Object]) -> anyhow::Result<String> {
    let docs = objects
        .iter()
        .map(output::decode)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(weir_policy::to_yaml(&docs))
}
