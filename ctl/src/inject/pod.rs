//! Adding the proxy to a pod template (its `metadata` and `spec`) and taking it out again.
//!
//! Inject first removes an earlier injection, so injecting injected output (or output of
//! another version, or of the other sidecar form) yields what injecting the original does.
//! Uninject removes exactly the entries inject adds, by name, and the keys inject had to
//! create when that leaves them empty.

use serde_norway::{Mapping, Value};

use super::FieldError;
use super::annotations::{self, INJECTED, PROXY_VERSION_LABEL, Settings};
use super::containers::{
    self, ADMIN_PORT, INBOUND_PORT, INIT_NAME, OUTBOUND_PORT, PROXY_NAME, VERSION, VOLUMES,
};
use super::documents::{describe, join};
use super::probes;

/// What became of one pod template.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    /// Left as it was, with the reason when the user may not expect it.
    Unchanged(Option<String>),
}

/// Whether a template carries inject's marker annotation.
pub fn injected(template: &Mapping) -> bool {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(INJECTED))
        .is_some()
}

/// `field` is the template's path in the document ("" for a Pod, `spec.template` …).
pub fn inject(
    template: &mut Mapping,
    settings: &Settings,
    legacy: bool,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<Outcome, FieldError> {
    if settings.disabled {
        return Ok(Outcome::Unchanged(None));
    }
    let spec_field = join(field, "spec");
    // Checked on a copy so that an error leaves the template as it was.
    let mut pod = template.clone();
    uninject(&mut pod);
    let spec = spec_mut(&mut pod, &spec_field)?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Unchanged(Some(
            "hostNetwork pods share the node's network: iptables rules there would capture \
             the node's traffic"
                .into(),
        )));
    }
    check_conflicts(spec, &spec_field)?;
    let found = probes::collect(spec, &spec_field)?;
    let skipped: Vec<u16> = std::iter::once(ADMIN_PORT)
        .chain(settings.skip_inbound.iter().copied())
        .collect();
    for (probe, port, what) in &found.unexempted {
        if !skipped.contains(port) {
            warnings.push(format!(
                "{probe}: {what} on port {port} is refused by the proxy under strict mTLS; \
                 add {port} to {}",
                annotations::SKIP_INBOUND
            ));
        }
    }
    let grace_field = join(&spec_field, "terminationGracePeriodSeconds");
    let grace = match spec.get("terminationGracePeriodSeconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
            FieldError::new(&grace_field, format!("expected whole seconds, got {n}"))
        })?),
        Some(other) => {
            return Err(FieldError::new(
                &grace_field,
                format!("expected whole seconds, got {}", describe(other)),
            ));
        }
    };
    let drain = containers::drain_timeout(grace);
    let init = containers::init_container(settings);
    let proxy = containers::proxy_container(settings, &drain, &found.paths, legacy);

    let mut own_init = match spec.get_mut("initContainers") {
        Some(Value::Sequence(list)) => std::mem::take(list),
        _ => Vec::new(),
    };
    let mut first = vec![init];
    if legacy {
        if let Some(Value::Sequence(apps)) = spec.get_mut("containers") {
            apps.insert(0, proxy);
        }
    } else {
        first.push(proxy);
    }
    first.append(&mut own_init);
    insert_before(spec, "initContainers", Value::Sequence(first), "containers");
    match spec.get_mut("volumes") {
        Some(Value::Sequence(volumes)) => volumes.extend(containers::volumes()),
        _ => {
            spec.insert("volumes".into(), Value::Sequence(containers::volumes()));
        }
    }

    if !matches!(pod.get("metadata"), Some(Value::Mapping(_))) {
        insert_before(&mut pod, "metadata", Value::Mapping(Mapping::new()), "spec");
    }
    if let Some(Value::Mapping(metadata)) = pod.get_mut("metadata") {
        annotations::set(metadata, "annotations", INJECTED, VERSION);
        annotations::set(metadata, "labels", PROXY_VERSION_LABEL, VERSION);
    }
    *template = pod;
    Ok(Outcome::Changed)
}

/// Removes what [`inject`] added; a template without the marker is left alone, so a user's
/// own container that happens to be called `weir-proxy` is never touched.
pub fn uninject(template: &mut Mapping) -> Outcome {
    if !injected(template) {
        return Outcome::Unchanged(None);
    }
    if let Some(Value::Mapping(spec)) = template.get_mut("spec") {
        remove_named(spec, "initContainers", &[INIT_NAME, PROXY_NAME]);
        remove_named(spec, "containers", &[PROXY_NAME]);
        remove_named(spec, "volumes", &VOLUMES);
    }
    if let Some(Value::Mapping(metadata)) = template.get_mut("metadata") {
        annotations::unset(metadata, "annotations", INJECTED);
        annotations::unset(metadata, "labels", PROXY_VERSION_LABEL);
        if metadata.is_empty() {
            template.shift_remove("metadata");
        }
    }
    Outcome::Changed
}

/// Drops the entries of `spec.<list>` named one of `names`, and the list when none remain
/// (containers always keep theirs).
fn remove_named(spec: &mut Mapping, list: &str, names: &[&str]) {
    let Some(Value::Sequence(items)) = spec.get_mut(list) else {
        return;
    };
    items.retain(|item| {
        !item
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.contains(&n))
    });
    if items.is_empty() && list != "containers" {
        spec.shift_remove(list);
    }
}

fn spec_mut<'a>(pod: &'a mut Mapping, field: &str) -> Result<&'a mut Mapping, FieldError> {
    let spec = match pod.get_mut("spec") {
        Some(Value::Mapping(spec)) => spec,
        Some(other) => {
            let reason = format!("expected a pod spec mapping, got {}", describe(other));
            return Err(FieldError::new(field, reason));
        }
        None => return Err(FieldError::new(field, "missing (a pod spec is required)")),
    };
    match spec.get("containers") {
        Some(Value::Sequence(list)) if !list.is_empty() => Ok(spec),
        _ => Err(FieldError::new(
            &join(field, "containers"),
            "expected a non-empty list of containers",
        )),
    }
}

/// Names and ports the proxy needs for itself.
fn check_conflicts(spec: &Mapping, spec_field: &str) -> Result<(), FieldError> {
    let ours = [
        (INBOUND_PORT, "inbound"),
        (OUTBOUND_PORT, "outbound"),
        (ADMIN_PORT, "admin"),
    ];
    for list in ["initContainers", "containers"] {
        let Some(Value::Sequence(items)) = spec.get(list) else {
            continue;
        };
        for (i, container) in items.iter().enumerate() {
            let field = format!("{spec_field}.{list}[{i}]");
            if let Some(name) = container.get("name").and_then(Value::as_str)
                && (name == INIT_NAME || name == PROXY_NAME)
            {
                return Err(FieldError::new(
                    &join(&field, "name"),
                    format!("the name {name:?} is reserved for the container weirctl inject adds"),
                ));
            }
            let ports = container.get("ports").and_then(Value::as_sequence);
            for (j, port) in ports.into_iter().flatten().enumerate() {
                let number = port.get("containerPort").and_then(Value::as_u64);
                if let Some((port, what)) = ours.iter().find(|(p, _)| Some(u64::from(*p)) == number)
                {
                    return Err(FieldError::new(
                        &format!("{field}.ports[{j}].containerPort"),
                        format!(
                            "port {port} is the proxy's {what} port in the same network namespace"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(Value::Sequence(volumes)) = spec.get("volumes") {
        for (i, volume) in volumes.iter().enumerate() {
            if let Some(name) = volume.get("name").and_then(Value::as_str)
                && VOLUMES.contains(&name)
            {
                return Err(FieldError::new(
                    &format!("{spec_field}.volumes[{i}].name"),
                    format!("the name {name:?} is reserved for the volume weirctl inject adds"),
                ));
            }
        }
    }
    Ok(())
}

/// Inserts `key` before `before` (or at the end), keeping the other keys' order, so the
/// output reads like a hand-written manifest and uninject restores the original order.
fn insert_before(map: &mut Mapping, key: &str, value: Value, before: &str) {
    if map.contains_key(key) {
        map.insert(key.into(), value);
        return;
    }
    let mut rebuilt = Mapping::with_capacity(map.len() + 1);
    let mut pending = Some(value);
    for (k, v) in std::mem::take(map) {
        if k.as_str() == Some(before)
            && let Some(value) = pending.take()
        {
            rebuilt.insert(key.into(), value);
        }
        rebuilt.insert(k, v);
    }
    if let Some(value) = pending {
        rebuilt.insert(key.into(), value);
    }
    *map = rebuilt;
}
