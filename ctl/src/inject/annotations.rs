//! The `weir.dev/*` annotations that steer injection (deploy/README.md, "Annotations").

use std::collections::BTreeMap;

use serde_norway::{Mapping, Value};

use super::FieldError;
use super::documents::join;

pub const INJECT: &str = "weir.dev/inject";
pub const SERVICE: &str = "weir.dev/service";
pub const SKIP_INBOUND: &str = "weir.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND: &str = "weir.dev/skip-outbound-ports";
pub const INBOUND: &str = "weir.dev/inbound-ports";
pub const OUTBOUND: &str = "weir.dev/outbound-ports";
pub const PROXY_IMAGE: &str = "weir.dev/proxy-image";
pub const INIT_IMAGE: &str = "weir.dev/init-image";
/// The marker inject adds to the pod template; its value is the proxy version.
pub const INJECTED: &str = "weir.dev/injected";
/// The label inject adds to the pod template.
pub const PROXY_VERSION_LABEL: &str = "weir.dev/proxy-version";

/// Annotations or labels merged from the workload down to its pod template (the template
/// wins), each remembering the field it came from for error messages.
#[derive(Debug, Default, Clone)]
pub struct Merged {
    entries: BTreeMap<String, (String, String)>,
}

impl Merged {
    /// Adds `metadata.<what>` of one level (`prefix` is that metadata's field path); later
    /// levels override earlier ones.
    pub fn add(&mut self, metadata: Option<&Value>, what: &str, prefix: &str) {
        let Some(map) = metadata
            .and_then(|m| m.get(what))
            .and_then(Value::as_mapping)
        else {
            return;
        };
        for (key, value) in map {
            let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                continue;
            };
            let field = format!("{}[{key:?}]", join(prefix, what));
            self.entries
                .insert(key.to_string(), (value.to_string(), field));
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|(value, _)| value.as_str())
    }

    fn field(&self, key: &str) -> String {
        self.entries
            .get(key)
            .map(|(_, field)| field.clone())
            .unwrap_or_default()
    }
}

/// What the annotations ask of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub disabled: bool,
    /// The mesh service (`WEIR_SERVICE`).
    pub service: String,
    /// Extra skip ports, beyond the defaults.
    pub skip_inbound: Vec<u16>,
    pub skip_outbound: Vec<u16>,
    /// Redirect only these ports (empty: all).
    pub inbound: Vec<u16>,
    pub outbound: Vec<u16>,
    pub proxy_image: Option<String>,
    pub init_image: Option<String>,
}

impl Settings {
    /// `name` is the workload's own name, the mesh service when nothing else names one.
    pub fn parse(
        annotations: &Merged,
        labels: &Merged,
        name: Option<&str>,
        name_field: &str,
    ) -> Result<Settings, FieldError> {
        let disabled = match annotations.get(INJECT) {
            None | Some("enabled") => false,
            Some("disabled") => true,
            Some(other) => {
                return Err(FieldError::new(
                    &annotations.field(INJECT),
                    format!("expected enabled or disabled, got {other:?}"),
                ));
            }
        };
        let service = annotations
            .get(SERVICE)
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .or_else(|| labels.get("app"))
            .or(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                FieldError::new(
                    name_field,
                    format!(
                        "cannot tell the mesh service: no {SERVICE} annotation, \
                         app.kubernetes.io/name or app label, or name"
                    ),
                )
            })?
            .to_string();
        let ports = |key: &str| match annotations.get(key) {
            None => Ok(Vec::new()),
            Some(text) => {
                port_list(text).map_err(|reason| FieldError::new(&annotations.field(key), reason))
            }
        };
        let image = |key: &str| -> Result<Option<String>, FieldError> {
            match annotations.get(key) {
                None => Ok(None),
                Some(image) if image.is_empty() || image.chars().any(char::is_whitespace) => {
                    Err(FieldError::new(
                        &annotations.field(key),
                        format!("expected an image reference, got {image:?}"),
                    ))
                }
                Some(image) => Ok(Some(image.to_string())),
            }
        };
        Ok(Settings {
            disabled,
            service,
            skip_inbound: ports(SKIP_INBOUND)?,
            skip_outbound: ports(SKIP_OUTBOUND)?,
            inbound: ports(INBOUND)?,
            outbound: ports(OUTBOUND)?,
            proxy_image: image(PROXY_IMAGE)?,
            init_image: image(INIT_IMAGE)?,
        })
    }
}

/// `"8080, 9090"` → `[8080, 9090]`, as `weir-proxy init` accepts them (1–65535).
fn port_list(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(port) if port > 0 => {
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            _ => {
                return Err(format!(
                    "expected a comma list of ports 1-65535, got {part:?} in {text:?}"
                ));
            }
        }
    }
    Ok(ports)
}

/// Adds `key: value` to `metadata.<what>`, creating the mapping if needed.
pub fn set(metadata: &mut Mapping, what: &str, key: &str, value: &str) {
    let entry = metadata
        .entry(Value::from(what))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(map) = entry {
        map.insert(Value::from(key), Value::from(value));
    }
}

/// Removes `key` from `metadata.<what>`, and the mapping when that leaves it empty.
pub fn unset(metadata: &mut Mapping, what: &str, key: &str) {
    let Some(Value::Mapping(map)) = metadata.get_mut(what) else {
        return;
    };
    map.shift_remove(key);
    if map.is_empty() {
        metadata.shift_remove(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(pairs: &[(&str, &str)]) -> Merged {
        let mut map = Mapping::new();
        for (k, v) in pairs {
            map.insert(Value::from(*k), Value::from(*v));
        }
        let mut meta = Mapping::new();
        meta.insert("annotations".into(), Value::Mapping(map));
        let mut merged = Merged::default();
        merged.add(
            Some(&Value::Mapping(meta)),
            "annotations",
            "spec.template.metadata",
        );
        merged
    }

    #[test]
    fn template_wins_and_service_falls_back() {
        let mut outer = Mapping::new();
        outer.insert("service".into(), "outer".into());
        let mut labels = Mapping::new();
        labels.insert("app".into(), "web".into());
        let mut meta = Mapping::new();
        meta.insert("annotations".into(), Value::Mapping(outer));
        meta.insert("labels".into(), Value::Mapping(labels));
        let meta = Value::Mapping(meta);
        let mut annotations = Merged::default();
        annotations.add(Some(&meta), "annotations", "metadata");
        let mut label_set = Merged::default();
        label_set.add(Some(&meta), "labels", "metadata");
        let settings = Settings::parse(&annotations, &label_set, Some("name"), "metadata.name")
            .expect("valid");
        assert_eq!(settings.service, "web");
        let settings =
            Settings::parse(&annotations, &Merged::default(), Some("name"), "").expect("valid");
        assert_eq!(settings.service, "name");
        let with = merged(&[(SERVICE, "pay"), (SKIP_INBOUND, "9090, 8443,9090")]);
        let settings = Settings::parse(&with, &label_set, Some("name"), "").expect("valid");
        assert_eq!(settings.service, "pay");
        assert_eq!(settings.skip_inbound, vec![9090, 8443]);
    }

    #[test]
    fn bad_annotations_name_their_field() {
        let err = Settings::parse(
            &merged(&[(SKIP_OUTBOUND, "5432,postgres")]),
            &Merged::default(),
            Some("x"),
            "",
        )
        .expect_err("invalid");
        assert_eq!(
            err.field,
            "spec.template.metadata.annotations[\"weir.dev/skip-outbound-ports\"]"
        );
        assert!(err.reason.contains("\"postgres\""), "{}", err.reason);
        for bad in [(INJECT, "off"), (INBOUND, "0"), (PROXY_IMAGE, "a b")] {
            assert!(
                Settings::parse(&merged(&[bad]), &Merged::default(), Some("x"), "").is_err(),
                "{bad:?}"
            );
        }
        let off = Settings::parse(
            &merged(&[(INJECT, "disabled")]),
            &Merged::default(),
            Some("x"),
            "",
        )
        .expect("valid");
        assert!(off.disabled);
    }
}
