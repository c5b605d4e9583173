//! Multi-document YAML read and written the way Kubernetes reads it.
//!
//! The API server and kubectl resolve plain scalars by YAML 1.1 (go-yaml v2): `0644` is the
//! octal 420 of a `defaultMode`, `on` and `yes` are booleans. serde_norway resolves by YAML 1.2
//! and quotes by YAML 1.2, so `defaultMode: 0644` would come back as the string `'0644'` and
//! `value: "on"` as a plain `on` (a boolean to the cluster). Here the parser's events keep
//! each scalar's style, plain scalars are resolved by YAML 1.1, and the emitter quotes every
//! string that any YAML 1.1 or 1.2 reader could take for something else.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_norway::{Mapping, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// Every non-empty document of `text`, in order; merge keys (`<<`) are applied, aliases
/// expanded. Empty documents (a trailing `---`) are dropped.
pub fn load_all(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|err| YamlError {
            document: builder.documents.len() + 1,
            line: err.marker().line(),
            column: err.marker().col() + 1,
            reason: err.info().to_string(),
        })?;
        if matches!(event, Event::StreamEnd) {
            break;
        }
        builder.event(event, mark)?;
    }
    Ok(builder
        .documents
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect())
}

/// A node being built: collections wait for their children.
enum Open {
    Sequence(Vec<Value>, usize),
    /// Entries, the key waiting for its value, the anchor, where the mapping started.
    Mapping(Mapping, Option<Value>, usize),
}

#[derive(Default)]
struct Builder {
    documents: Vec<Value>,
    stack: Vec<Open>,
    anchors: HashMap<usize, Value>,
}

impl Builder {
    fn event(&mut self, event: Event, mark: Marker) -> Result<(), YamlError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref());
                self.finish(value, anchor, mark)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(value) => self.finish(value.clone(), 0, mark),
                None => Err(self.error(mark, "alias to an unknown anchor".into())),
            },
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Open::Sequence(Vec::new(), anchor));
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Mapping(Mapping::new(), None, anchor));
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Open::Sequence(items, anchor)) => {
                    self.finish(Value::Sequence(items), anchor, mark)
                }
                _ => Err(self.error(mark, "unbalanced sequence end".into())),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Open::Mapping(map, None, anchor)) => {
                    let mut value = Value::Mapping(map);
                    value
                        .apply_merge()
                        .map_err(|err| self.error(mark, format!("invalid merge (<<): {err}")))?;
                    self.finish(value, anchor, mark)
                }
                _ => Err(self.error(mark, "unbalanced mapping end".into())),
            },
            Event::DocumentStart => {
                self.anchors.clear();
                Ok(())
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => Ok(()),
        }
    }

    /// Hands a complete node to its parent (or makes it the document).
    fn finish(&mut self, value: Value, anchor: usize, mark: Marker) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.documents.push(value);
                Ok(())
            }
            Some(Open::Sequence(items, _)) => {
                items.push(value);
                Ok(())
            }
            Some(Open::Mapping(map, key @ None, _)) => {
                if value.is_mapping() || value.is_sequence() {
                    let reason = "a mapping or sequence as a mapping key is not supported";
                    return Err(self.error(mark, reason.into()));
                }
                if map.contains_key(&value) {
                    let reason = format!("duplicate key {}", describe_key(&value));
                    return Err(self.error(mark, reason));
                }
                *key = Some(value);
                Ok(())
            }
            Some(Open::Mapping(map, key, _)) => {
                if let Some(key) = key.take() {
                    map.insert(key, value);
                }
                Ok(())
            }
        }
    }

    fn error(&self, mark: Marker, reason: String) -> YamlError {
        YamlError {
            document: self.documents.len() + 1,
            line: mark.line(),
            column: mark.col() + 1,
            reason,
        }
    }
}

fn describe_key(key: &Value) -> String {
    match key {
        Value::String(s) => format!("{s:?}"),
        other => emit_scalar_inline(other),
    }
}

fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    let core = tag
        .filter(|t| t.handle == "tag:yaml.org,2002:" || t.handle == "!!")
        .map(|t| t.suffix.as_str());
    match (core, style) {
        (Some("str" | "binary"), _) => Value::String(text),
        (None, TScalarStyle::Plain) | (Some("int" | "float" | "bool" | "null"), _) => {
            resolve_plain(text)
        }
        _ => Value::String(text),
    }
}

/// go-yaml v2's resolution of a plain scalar (what kubectl and the API server do).
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    if let Some(b) = bool_word(&text) {
        return Value::Bool(b);
    }
    if let Some(number) = number(&text) {
        return Value::Number(number);
    }
    Value::String(text)
}

fn bool_word(text: &str) -> Option<bool> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

fn number(text: &str) -> Option<Number> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(Number::from(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(Number::from(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(Number::from(f64::NAN)),
        _ => {}
    }
    // go-yaml v2 drops underscores, then parses with Go's base prefixes (0x, 0o, 0b, and a
    // leading 0 for octal).
    let plain = text.replace('_', "");
    let (negative, digits) = match plain.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, plain.strip_prefix('+').unwrap_or(&plain)),
    };
    let (radix, body) = if let Some(b) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, b)
    } else if let Some(b) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, b)
    } else if let Some(b) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, b)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if !body.is_empty()
        && body.chars().all(|c| c.is_digit(radix))
        && let Ok(magnitude) = u64::from_str_radix(body, radix)
    {
        if !negative {
            return Some(Number::from(magnitude));
        }
        if let Ok(signed) = i64::try_from(magnitude) {
            return Some(Number::from(-signed));
        }
        if magnitude == i64::MIN.unsigned_abs() {
            return Some(Number::from(i64::MIN));
        }
    }
    if yaml_float(&plain) {
        return plain.parse::<f64>().ok().map(Number::from);
    }
    None
}

/// go-yaml v2's float pattern: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn yaml_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()),
        Some((int, frac)) => {
            !int.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

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

fn emit_scalar_inline(value: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value {
        let mut docs = load_all(text).expect("valid YAML");
        assert_eq!(docs.len(), 1, "{text}");
        docs.remove(0)
    }

    #[test]
    fn plain_scalars_resolve_as_kubernetes_does() {
        let doc = one(
            "a: 0644\nb: on\nc: \"on\"\nd: '0644'\ne: 1_000\nf: 0x1F\ng: 1.5\nh: ~\ni: 10m\nj: -3\nk: !!str 12\nl: 08\n",
        );
        assert_eq!(doc["a"], Value::from(420));
        assert_eq!(doc["b"], Value::Bool(true));
        assert_eq!(doc["c"], Value::from("on"));
        assert_eq!(doc["d"], Value::from("0644"));
        assert_eq!(doc["e"], Value::from(1000));
        assert_eq!(doc["f"], Value::from(31));
        assert_eq!(doc["g"], Value::from(1.5));
        assert_eq!(doc["h"], Value::Null);
        assert_eq!(doc["i"], Value::from("10m"));
        assert_eq!(doc["j"], Value::from(-3));
        assert_eq!(doc["k"], Value::from("12"));
        // go-yaml v2: not octal, but it matches the float pattern.
        assert_eq!(doc["l"], Value::from(8.0));
    }

    #[test]
    fn ambiguous_strings_are_quoted_and_read_back() {
        let strings = [
            "yes",
            "no",
            "on",
            "OFF",
            "y",
            "N",
            "true",
            "null",
            "~",
            "",
            "0644",
            "1_000",
            "12:30",
            "0x1F",
            "1e3",
            ".5",
            ".inf",
            "2024-01-01",
            "+1",
            "-1",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "- x",
            "-Xmx512m",
            "#c",
            "@x",
            "*x",
            "&x",
            "!x",
            "|",
            ">",
            "%x",
            "key:",
            "---",
            "tab\there",
            "bell\u{7}",
            "line\u{2028}sep",
            "\"q\"",
            "'s'",
            "multi\nline\n",
            "multi\nline",
            "  indented\nfirst",
            "trailing\n\n",
            "ws\n  \nx",
            "https://weir-control.weir-system.svc.cluster.local:8090",
            "$(POD_IP):4143",
            "8080/healthz,8080/ready",
            "ünïcode",
            "[x]",
            "{x}",
            "a,b",
        ];
        let seq = Value::Sequence(strings.iter().map(|s| Value::from(*s)).collect());
        let mut map = Mapping::new();
        for s in strings {
            map.insert(Value::from(s), Value::from(s));
        }
        for value in [seq, Value::Mapping(map)] {
            let text = emit_all([&value]);
            assert_eq!(one(&text), value, "{text}");
        }
        let text = emit_all([&Value::from("on")]);
        assert_eq!(text, "--- \"on\"\n");
    }

    #[test]
    fn nested_structures_round_trip() {
        let text = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: x
  labels: {}
data:
  script: |
    #!/bin/sh
    echo \"hi\"  # a comment
  empty: ''
list:
- - a
  - b
- []
- {}
- name: a
  items:
  - 1
  - 2.5
  - -.inf
  nested:
    deep: [x, {y: z}]
- ? plain
  : value
";
        let value = one(text);
        let emitted = emit_all([&value]);
        assert_eq!(one(&emitted), value, "{emitted}");
        // Emitting what was emitted changes nothing.
        assert_eq!(emit_all([&one(&emitted)]), emitted);
        assert!(
            emitted.contains("  script: |\n    #!/bin/sh\n"),
            "{emitted}"
        );
    }

    #[test]
    fn anchors_merges_and_empty_documents() {
        let docs = load_all("---\n---\nbase: &b {x: 1, z: 2}\nderived:\n  <<: *b\n  z: 3\n---\n")
            .expect("valid");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["derived"]["x"], Value::from(1));
        assert_eq!(docs[0]["derived"]["z"], Value::from(3));
        // YAML 1.1, as kubectl reads it: a plain `y` key is the boolean true.
        let docs = load_all("y: 1\n").expect("valid");
        assert_eq!(docs[0].get(Value::Bool(true)), Some(&Value::from(1)));
    }

    #[test]
    fn errors_name_the_document_and_line() {
        let err = load_all("a: 1\n---\nb: [unclosed\n").expect_err("invalid");
        assert_eq!(err.document, 2);
        assert!(err.line >= 3, "{err:?}");
        let err = load_all("a: 1\na: 2\n").expect_err("duplicate");
        assert!(err.reason.contains("duplicate key \"a\""), "{err}");
    }
}
