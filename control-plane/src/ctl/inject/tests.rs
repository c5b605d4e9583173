//! Fixture tests (filled below).
