//! ServicePolicy's `authorization`: the allow-list rules, and how a validated list matches a
//! caller.

use super::findings::Findings;
use super::names::spiffe_pattern;
use crate::model::*;

pub(super) fn authorization(f: &mut Findings, a: &Authorization) {
    match a.mode {
        AuthzMode::AllowAll if !a.allow.is_empty() => f.add(
            "spec.authorization.allow",
            format!(
                "must be empty when mode is allowAll (got {} entries); use mode: allowList to restrict callers",
                a.allow.len()
            ),
        ),
        AuthzMode::AllowAll => {}
        AuthzMode::AllowList => {
            for (i, pattern) in a.allow.iter().enumerate() {
                f.check(format_args!("spec.authorization.allow[{i}]"), spiffe_pattern(pattern));
            }
        }
    }
}

impl Authorization {
    /// Whether a peer with this SPIFFE id may call. Assumes the policy passed validation.
    pub fn allows(&self, peer_id: &str) -> bool {
        match self.mode {
            AuthzMode::AllowAll => true,
            AuthzMode::AllowList => {
                self.allow
                    .iter()
                    .any(|pattern| match pattern.strip_suffix('*') {
                        Some(prefix) => peer_id.starts_with(prefix),
                        None => peer_id == pattern,
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_allows() {
        let a = Authorization {
            mode: AuthzMode::AllowList,
            allow: vec![
                "spiffe://weir.local/ns/shop/*".into(),
                "spiffe://weir.local/ns/ops/sa/cron".into(),
            ],
        };
        assert!(a.allows("spiffe://weir.local/ns/shop/sa/orders"));
        assert!(a.allows("spiffe://weir.local/ns/ops/sa/cron"));
        assert!(!a.allows("spiffe://weir.local/ns/ops/sa/cron2"));
        assert!(!a.allows("spiffe://weir.local/ns/shopping/sa/x"));
        assert!(!a.allows("spiffe://other/ns/shop/sa/orders"));
        let all = Authorization {
            mode: AuthzMode::AllowAll,
            allow: vec![],
        };
        assert!(all.allows("spiffe://anything/ns/a/sa/b"));
    }
}
