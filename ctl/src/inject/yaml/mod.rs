//! Multi-document YAML read and written the way Kubernetes reads it.
//!
//! The API server and kubectl resolve plain scalars by YAML 1.1 (go-yaml v2): `0644` is the
//! octal 420 of a `defaultMode`, `on` and `yes` are booleans. serde_norway resolves by YAML 1.2
//! and quotes by YAML 1.2, so `defaultMode: 0644` would come back as the string `'0644'` and
//! `value: "on"` as a plain `on` (a boolean to the cluster). Here the parser's events keep
//! each scalar's style, plain scalars are resolved by YAML 1.1, and the emitter quotes every
//! string that any YAML 1.1 or 1.2 reader could take for something else.
//!
//! `load` reads (events to values, YAML 1.1 resolution), `emit` writes (quoting, blocks).

mod emit;
mod load;
#[cfg(test)]
mod tests;

pub use emit::emit_all;
pub use load::load_all;

/// Why a text is not YAML, with the 1-based document and line where the parser stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid YAML at line {line} column {column}: {reason}")]
pub struct YamlError {
    /// 1-based index of the document being read.
    pub document: usize,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}
