//! Reading: the parser's events built into values, plain scalars resolved by YAML 1.1 as
//! go-yaml v2 does.

use std::collections::HashMap;

use serde_norway::{Mapping, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::YamlError;
use super::emit::emit_scalar_inline;

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

pub(super) fn bool_word(text: &str) -> Option<bool> {
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

pub(super) fn number(text: &str) -> Option<Number> {
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
