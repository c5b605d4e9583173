//! Document kinds as users type them (`sp`, `ServicePolicies`) and `NAMESPACE/NAME` addresses.

use std::fmt;
use std::str::FromStr;

use crate::Usage;

/// A document kind, parsed from the names and short names users type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MeshConfig,
    ServicePolicy,
    Endpoints,
}

impl Kind {
    /// The name the admin API and documents use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MeshConfig => "MeshConfig",
            Kind::ServicePolicy => "ServicePolicy",
            Kind::Endpoints => "Endpoints",
        }
    }

    /// MeshConfig is cluster-wide: its namespace is always empty.
    pub fn namespaced(self) -> bool {
        self != Kind::MeshConfig
    }

    /// Splits `NAMESPACE/NAME` and applies the `default` namespace, so every command addresses
    /// one object the same way. Disagreeing `-n` and `NAMESPACE/` is a usage error.
    pub fn object(self, name: &str, namespace: Option<&str>) -> Result<(String, String), Usage> {
        let (inline, name) = match name.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, name),
        };
        if name.is_empty() || inline.is_some_and(str::is_empty) {
            return Err(Usage(format!(
                "expected NAME or NAMESPACE/NAME, got {name:?}"
            )));
        }
        let namespace = match (inline, namespace) {
            (Some(a), Some(b)) if a != b => {
                return Err(Usage(format!(
                    "namespace given twice: {a:?} in the name and {b:?} with -n"
                )));
            }
            (Some(ns), _) | (None, Some(ns)) => ns,
            (None, None) => weir_policy::DEFAULT_NAMESPACE,
        };
        let namespace = if self.namespaced() { namespace } else { "" };
        Ok((namespace.to_string(), name.to_string()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "meshconfig" | "meshconfigs" | "mc" => Ok(Kind::MeshConfig),
            "servicepolicy" | "servicepolicies" | "sp" => Ok(Kind::ServicePolicy),
            "endpoints" | "ep" => Ok(Kind::Endpoints),
            _ => Err(format!(
                "unknown kind {text:?}: expected meshconfig (mc), servicepolicy (sp) or endpoints (ep)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_aliases() {
        for (text, kind) in [
            ("meshconfig", Kind::MeshConfig),
            ("MC", Kind::MeshConfig),
            ("MeshConfig", Kind::MeshConfig),
            ("servicepolicy", Kind::ServicePolicy),
            ("ServicePolicies", Kind::ServicePolicy),
            ("sp", Kind::ServicePolicy),
            ("Endpoints", Kind::Endpoints),
            ("ep", Kind::Endpoints),
        ] {
            assert_eq!(text.parse::<Kind>(), Ok(kind), "{text}");
        }
        assert!("pods".parse::<Kind>().is_err());
    }

    #[test]
    fn object_names() {
        let sp = Kind::ServicePolicy;
        assert_eq!(
            sp.object("payments", None).ok(),
            Some(("default".into(), "payments".into()))
        );
        assert_eq!(
            sp.object("shop/payments", None).ok(),
            Some(("shop".into(), "payments".into()))
        );
        assert_eq!(
            sp.object("payments", Some("shop")).ok(),
            Some(("shop".into(), "payments".into()))
        );
        assert!(sp.object("shop/payments", Some("other")).is_err());
        assert!(sp.object("shop/", None).is_err());
        assert_eq!(
            Kind::MeshConfig.object("default", Some("shop")).ok(),
            Some((String::new(), "default".into()))
        );
    }
}
