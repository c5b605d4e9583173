//! Errors that name the file, the document, the field path and the reason, so a user can fix a
//! policy without guessing which of twenty documents is wrong.

use std::fmt;

/// One problem in one place.
///
/// Displays as `payments.yaml: ServicePolicy shop/payments: spec.retries.budget.percent: must be
/// 0..=100, got 250`; empty parts (no source, unknown document, whole-document path) are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the text came from: a file path, `<stdin>`, or whatever the caller of
    /// [`parse_str`](crate::parse_str) passed. Empty when unknown (e.g. [`validate_set`](crate::validate_set)).
    pub source: String,
    /// `ServicePolicy shop/payments`, or `document 2` when kind or name could not be read.
    pub document: Option<String>,
    /// Field path such as `spec.routes[1].backends`; empty when the error is about the whole
    /// document or file.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for part in [
            Some(self.source.as_str()),
            self.document.as_deref(),
            Some(self.path.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter(|part| !part.is_empty())
        {
            write!(f, "{sep}{part}")?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.reason)
    }
}

// `source` is a file name here, not a cause, so this cannot be derived with thiserror (which would
// treat a field called `source` as the underlying error).
impl std::error::Error for PolicyError {}

/// Every error found, in document order; never empty when returned as `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<PolicyError>);

impl Errors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// `Ok(())` when nothing was collected, so callers can gather first and decide once.
    pub fn into_result(self) -> Result<(), Errors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<PolicyError> for Errors {
    fn from(err: PolicyError) -> Self {
        Errors(vec![err])
    }
}

impl IntoIterator for Errors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(source: &str, document: Option<&str>, path: &str, reason: &str) -> PolicyError {
        PolicyError {
            source: source.into(),
            document: document.map(Into::into),
            path: path.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn display_matches_design_example() {
        let e = err(
            "payments.yaml",
            Some("ServicePolicy shop/payments"),
            "spec.retries.budget.percent",
            "must be 0..=100, got 250",
        );
        assert_eq!(
            e.to_string(),
            "payments.yaml: ServicePolicy shop/payments: spec.retries.budget.percent: must be 0..=100, got 250"
        );
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        let e = err(
            "a.yaml",
            Some("document 2"),
            "",
            "invalid YAML at line 4 column 7: x",
        );
        assert_eq!(
            e.to_string(),
            "a.yaml: document 2: invalid YAML at line 4 column 7: x"
        );
        let e = err("", None, "metadata.name", "duplicate");
        assert_eq!(e.to_string(), "metadata.name: duplicate");
        let all = Errors(vec![err("a", None, "", "one"), err("b", None, "", "two")]);
        assert_eq!(all.to_string(), "a: one\nb: two");
    }
}
