//! The error list every check writes into, with the range checks most fields share so their
//! messages read the same everywhere.

use std::fmt::Display;

use crate::duration::Duration;

/// Errors as (field path, reason); the caller adds source and document.
#[derive(Default)]
pub(crate) struct Findings(pub(crate) Vec<(String, String)>);

impl Findings {
    pub(super) fn add(&mut self, path: impl Display, reason: impl Into<String>) {
        self.0.push((path.to_string(), reason.into()));
    }

    pub(super) fn check(&mut self, path: impl Display, result: Result<(), String>) {
        if let Err(reason) = result {
            self.add(path, reason);
        }
    }

    pub(super) fn percent(&mut self, path: impl Display, value: u32, min: u32) {
        if !(min..=100).contains(&value) {
            self.add(path, format!("must be {min}..=100, got {value}"));
        }
    }

    pub(super) fn positive(&mut self, path: impl Display, value: Duration) {
        if value.is_zero() {
            self.add(path, "must be greater than 0s");
        }
    }

    pub(super) fn at_least_one(&mut self, path: impl Display, value: u32) {
        if value == 0 {
            self.add(path, "must be at least 1, got 0");
        }
    }

    /// `lower` (at `lower_path`) must not exceed `upper`, named `upper_name` in the message.
    pub(super) fn not_above(
        &mut self,
        lower_path: impl Display,
        lower: Duration,
        upper_name: &str,
        upper: Duration,
    ) {
        if lower > upper {
            self.add(
                lower_path,
                format!("must not exceed {upper_name} ({upper}), got {lower}"),
            );
        }
    }
}
