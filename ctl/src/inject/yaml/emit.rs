//! Writing: block-style YAML where every string any YAML 1.1 or 1.2 reader could take for
//! something else is quoted.

use std::fmt::Write as _;

use serde_norway::{Mapping, Value};

use super::load::{bool_word, number};

/// Whether some YAML reader (1.1 or 1.2) could read `text`, written plain, as a non-string:
/// such strings are quoted. Errs on the side of quoting.
fn ambiguous(text: &str) -> bool {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") || bool_word(text).is_some() {
        return true;
    }
    let lower = text.to_ascii_lowercase();
    if matches!(
        lower.trim_start_matches(['-', '+']),
        ".inf" | ".nan" | "inf" | "nan" | "infinity"
    ) {
        return true;
    }
    if number(text).is_some() {
        return true;
    }
    // YAML 1.1 sexagesimal numbers (`12:30`) and timestamps (`2024-01-01`).
    let unsigned = text.trim_start_matches(['-', '+']);
    let numeric_chars = unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'_' | b':' | b'.'));
    if numeric_chars && unsigned.bytes().any(|b| b.is_ascii_digit()) {
        return true;
    }
    let bytes = text.as_bytes();
    bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
}

/// Whether `text` can be written as a plain scalar in block context and read back as itself.
fn plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    if ambiguous(text)
        || text.starts_with("---")
        || text.starts_with("...")
        || text.ends_with([' ', ':'])
        || text.contains(": ")
        || text.contains(" #")
        || text.chars().any(|c| c.is_control() || special_char(c))
    {
        return false;
    }
    match first {
        // `-x`, `?x` and `:x` are plain scalars; `- x` is a sequence entry.
        '-' | '?' | ':' => text.chars().nth(1).is_some_and(|c| c != ' '),
        ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
        | '@' | '`' | ' ' => false,
        _ => true,
    }
}

/// Characters some readers treat as line breaks or byte-order marks.
fn special_char(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || special_char(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A multi-line string as a literal block (`|` or `|-`), when that reads back exactly.
fn literal_lines(text: &str) -> Option<(&'static str, Vec<&str>)> {
    if !text.contains('\n')
        || text.starts_with([' ', '\t', '\n'])
        || text.ends_with("\n\n")
        || text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || special_char(c))
    {
        return None;
    }
    let (header, body) = match text.strip_suffix('\n') {
        Some(body) => ("|", body),
        None => ("|-", text),
    };
    let lines: Vec<&str> = body.split('\n').collect();
    // Trailing spaces before a break survive a literal block, but a line of only spaces would
    // be read as part of the indentation.
    if lines.iter().any(|l| !l.is_empty() && l.trim().is_empty()) {
        return None;
    }
    Some((header, lines))
}

pub(super) fn emit_scalar_inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.is_nan() {
                    return ".nan".into();
                }
                if f.is_infinite() {
                    return if f > 0.0 { ".inf" } else { "-.inf" }.into();
                }
            }
            n.to_string()
        }
        Value::String(s) if plain_safe(s) => s.clone(),
        Value::String(s) => double_quoted(s),
        Value::Mapping(m) if m.is_empty() => "{}".into(),
        Value::Sequence(s) if s.is_empty() => "[]".into(),
        Value::Tagged(tagged) => emit_scalar_inline(&tagged.value),
        // Non-empty collections never reach here: `emit_value` writes them as blocks.
        Value::Mapping(_) | Value::Sequence(_) => "{}".into(),
    }
}

/// Documents as one multi-document YAML text (each starting with `---`).
pub fn emit_all<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---");
        emit_value(&mut out, doc, 0);
    }
    out
}

/// Writes `value` after something that is already on the line (`key:`, `-` or `---`), ending
/// with a line break. `indent` is the column of the enclosing node's children.
fn emit_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            emit_mapping(out, map, indent);
        }
        Value::Sequence(items) if !items.is_empty() => {
            out.push('\n');
            // Sequences under a key sit at the key's column, as kubectl writes them.
            emit_sequence(out, items, indent.saturating_sub(2), false);
        }
        Value::Tagged(tagged) => emit_value(out, &tagged.value, indent),
        Value::String(s) if !plain_safe(s) => {
            if let Some((header, lines)) = literal_lines(s) {
                out.push(' ');
                out.push_str(header);
                out.push('\n');
                for line in lines {
                    if !line.is_empty() {
                        push_indent(out, indent);
                        out.push_str(line);
                    }
                    out.push('\n');
                }
            } else {
                out.push(' ');
                out.push_str(&double_quoted(s));
                out.push('\n');
            }
        }
        scalar => {
            out.push(' ');
            out.push_str(&emit_scalar_inline(scalar));
            out.push('\n');
        }
    }
}

fn emit_mapping(out: &mut String, map: &Mapping, indent: usize) {
    for (key, value) in map {
        push_indent(out, indent);
        out.push_str(&emit_scalar_inline(key));
        out.push(':');
        emit_value(out, value, indent + 2);
    }
}

/// `indent` is the column of the `-`; with `inline_first` the first `-` continues the current
/// line (a sequence inside a sequence: `- - a`).
fn emit_sequence(out: &mut String, items: &[Value], indent: usize, inline_first: bool) {
    for (i, item) in items.iter().enumerate() {
        if i == 0 && inline_first {
            out.push(' ');
        } else {
            push_indent(out, indent);
        }
        out.push('-');
        match item {
            Value::Mapping(map) if !map.is_empty() => {
                // The first entry shares the `- ` line.
                let mut first = true;
                for (key, value) in map {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        push_indent(out, indent + 2);
                    }
                    out.push_str(&emit_scalar_inline(key));
                    out.push(':');
                    emit_value(out, value, indent + 4);
                }
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                emit_sequence(out, inner, indent + 2, true);
            }
            other => emit_value(out, other, indent + 2),
        }
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}
