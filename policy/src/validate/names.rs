//! Names and identities: DNS labels, SPIFFE ids and the allow-list patterns built on them.

/// DNS-1123 label: what Kubernetes allows for namespaces and service names.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters, \
             starting and ending with a letter or digit), got {s:?}"
        ))
    }
}

const SPIFFE_FORM: &str = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>";

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub fn spiffe_id(id: &str) -> Result<(), String> {
    let bad = || format!("must be a SPIFFE id {SPIFFE_FORM}, got {id:?}");
    let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (trust_domain, path) = rest.split_once('/').ok_or_else(bad)?;
    match path.split('/').collect::<Vec<_>>()[..] {
        ["ns", ns, "sa", sa]
            if trust_domain_ok(trust_domain) && dns_label(ns).is_ok() && service_account_ok(sa) =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// An allow-list entry: a SPIFFE id, or `spiffe://td/ns/<ns>/*` (also `…/ns/<ns>/sa/*`) for a
/// namespace, or `spiffe://td/*` for a whole trust domain.
pub(super) fn spiffe_pattern(pattern: &str) -> Result<(), String> {
    let Some(prefix) = pattern.strip_suffix("/*") else {
        return spiffe_id(pattern);
    };
    let bad = || {
        format!(
            "must be a SPIFFE id {SPIFFE_FORM}, or end in /* after a trust domain or namespace \
             (spiffe://weir.local/ns/shop/*), got {pattern:?}"
        )
    };
    let rest = prefix.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_ok = match path.split('/').collect::<Vec<_>>()[..] {
        [""] => true,
        // `…/ns/shop/sa/*` reads naturally and means the same as `…/ns/shop/*`.
        ["ns", ns] | ["ns", ns, "sa"] => dns_label(ns).is_ok(),
        _ => false,
    };
    if trust_domain_ok(trust_domain) && path_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// SPIFFE trust domains: lowercase letters, digits, '.', '-' and '_'.
fn trust_domain_ok(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Kubernetes service-account names are DNS subdomains (labels joined by '.').
fn service_account_ok(sa: &str) -> bool {
    sa.len() <= 253 && sa.split('.').all(|label| dns_label(label).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "payments", "payments-v2", "x1", &"a".repeat(63)] {
            assert_eq!(dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "Pay", "pay_ments", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spiffe_ids_and_patterns() {
        assert_eq!(spiffe_id("spiffe://weir.local/ns/shop/sa/orders"), Ok(()));
        assert_eq!(
            spiffe_id("spiffe://weir.local/ns/shop/sa/orders.v1"),
            Ok(())
        );
        for bad in [
            "spiffe://weir.local/ns/shop",
            "spiffe://weir.local/ns/shop/sa/",
            "spiffe://Weir/ns/shop/sa/orders",
            "http://weir.local/ns/shop/sa/orders",
            "spiffe://weir.local/ns/shop/sa/orders/extra",
            "spiffe:///ns/shop/sa/orders",
        ] {
            assert!(spiffe_id(bad).is_err(), "{bad}");
        }
        for ok in [
            "spiffe://weir.local/ns/shop/*",
            "spiffe://weir.local/ns/shop/sa/*",
            "spiffe://weir.local/*",
            "spiffe://weir.local/ns/a/sa/b",
        ] {
            assert_eq!(spiffe_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "spiffe://weir.local/ns/*",
            "spiffe://weir.local/ns/shop/sa/*x",
            "*",
            "spiffe:///*",
        ] {
            assert!(spiffe_pattern(bad).is_err(), "{bad}");
        }
    }
}
