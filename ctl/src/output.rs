//! How `weirctl` prints: width-bounded tables, documents as YAML or JSON, timestamps.
//!
//! Everything here is pure (strings in, strings out) so the formats can be tested without a
//! server.

use std::fmt::Write as _;

use weir_policy::Document;
use weir_proto::admin::v1::Object;

/// Tables must fit a 100-column terminal (and CI logs); wider cells are cut with `…`.
pub const MAX_WIDTH: usize = 100;
const GAP: &str = "  ";
/// A column is never squeezed below this, so even a crowded table keeps a readable prefix.
const MIN_COLUMN: usize = 4;

// === impl Table ===

/// A plain-text table in the style of `kubectl get`: upper-case headers, columns separated by two
/// spaces, no borders.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns cut at the start rather than the end.
    keep_end: Vec<usize>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            keep_end: Vec::new(),
        }
    }

    /// Cuts this column's cells at the start: SPIFFE identities share their
    /// `spiffe://domain/ns/` prefix and differ at the end.
    pub fn keep_end(mut self, column: usize) -> Self {
        self.keep_end.push(column);
        self
    }

    /// Missing cells print empty and extra cells are ignored, so a short row cannot panic.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(&c.into()))
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders with every line at most `max_width` characters (unless there are so many columns
    /// that even [`MIN_COLUMN`] each does not fit). Ends with a newline.
    pub fn render(&self, max_width: usize) -> String {
        let widths = self.widths(max_width);
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str(GAP);
                }
                let cell = if self.keep_end.contains(&i) {
                    truncate_start(cell, *width)
                } else {
                    truncate(cell, *width)
                };
                let pad = width.saturating_sub(cell.chars().count());
                text.push_str(&cell);
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// Natural widths, then the widest column gives up one character at a time until the table
    /// fits: long identities and error messages shrink first while short columns (revision,
    /// namespace) stay whole.
    fn widths(&self, max_width: usize) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let gaps = GAP.len() * widths.len().saturating_sub(1);
        while widths.iter().sum::<usize>() + gaps > max_width {
            let Some((i, widest)) = widths
                .iter()
                .copied()
                .enumerate()
                .max_by_key(|&(i, w)| (w, std::cmp::Reverse(i)))
            else {
                break;
            };
            if widest <= MIN_COLUMN {
                break;
            }
            widths[i] -= 1;
        }
        widths
    }
}

/// Cuts `text` to `width` characters, marking the cut with `…`.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Cuts `text` to its last `width` characters, marking the cut with `…`.
pub fn truncate_start(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    std::iter::once('…')
        .chain(text.chars().skip(len - (width - 1)))
        .collect()
}

/// Empty cells would shift what `awk` sees as columns.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

/// Multi-line server messages (NACK errors list one problem per line) would break the table.
pub fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines.next().unwrap_or_default().to_string();
    for line in lines {
        out.push_str("; ");
        out.push_str(line);
    }
    out.replace('\t', " ")
}

// === Documents ===

/// The object's document, decoded with the same types `apply` uses so that `get -o yaml` prints
/// exactly what `apply -f` accepts.
pub fn decode(object: &Object) -> anyhow::Result<Document> {
    serde_json::from_str(&object.json).map_err(|err| {
        anyhow::anyhow!(
            "{}: the server sent a document this weirctl cannot read ({err}); is weirctl older than the server?",
            key(&object.kind, &object.namespace, &object.name)
        )
    })
}

/// `ServicePolicy shop/payments`, the way weir-policy names documents.
pub fn key(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

/// YAML of one document; the diff and `get -o yaml` share it so both show the same text.
pub fn document_yaml(doc: &Document) -> String {
    weir_policy::to_yaml(std::slice::from_ref(doc))
}

/// `get -o json`: `[{"kind", "namespace", "name", "revision", "updated", "document"}]`. The
/// document is kept whole under `document` so `jq '.[].document'` gives apply-able JSON.
pub fn objects_json(objects: &[Object]) -> anyhow::Result<String> {
    let items = objects
        .iter()
        .map(|object| {
            let document: serde_json::Value =
                serde_json::from_str(&object.json).map_err(|err| {
                    anyhow::anyhow!(
                        "{}: the server sent invalid JSON: {err}",
                        key(&object.kind, &object.namespace, &object.name)
                    )
                })?;
            Ok(ObjectJson {
                kind: &object.kind,
                namespace: &object.namespace,
                name: &object.name,
                revision: object.revision,
                updated: timestamp(object.updated_unix_ms),
                document,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    pretty_json(&items)
}

/// A struct rather than `json!` so the keys come out in this order, not alphabetically.
#[derive(serde::Serialize)]
struct ObjectJson<'a> {
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    revision: u64,
    updated: String,
    document: serde_json::Value,
}

pub fn pretty_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(value)
        .map(|mut text| {
            text.push('\n');
            text
        })
        .map_err(|err| anyhow::anyhow!("cannot encode JSON: {err}"))
}

/// Writes command output to stdout. A closed pipe (`weirctl get sp | head -1`) is not an error
/// worth a panic, which is what `print!` does.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err),
        _ => Ok(()),
    }
}

// === Time ===

/// RFC 3339 in UTC (`2025-03-01T12:04:05Z`), or `-` when the server sent no time. Written out
/// rather than pulling in a date crate for one format.
pub fn timestamp(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(20);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits_and_truncates() {
        let mut table = Table::new(&["IDENTITY", "ADDRESS", "ACKED", "NACK", "CONNECTED SINCE"]);
        table.row([
            "spiffe://weir.local/ns/shop/sa/payments-with-a-very-long-service-account-name",
            "10.0.3.7:4143",
            "12",
            "v13: ServicePolicy shop/payments: spec.retries.budget.percent: must be 0..=100, got 250",
            "2025-03-01T12:04:05Z",
        ]);
        table.row(["short", "1.2.3.4:1", "1", "-", "disconnected"]);
        let text = table.render(MAX_WIDTH);
        for line in text.lines() {
            assert!(line.chars().count() <= MAX_WIDTH, "too wide: {line:?}");
        }
        assert!(text.contains('…'));
        // Short columns are left whole.
        assert!(text.contains("10.0.3.7:4143"));
        assert!(text.contains("2025-03-01T12:04:05Z"));
        assert!(
            text.lines()
                .next()
                .is_some_and(|h| h.starts_with("IDENTITY"))
        );
    }

    #[test]
    fn narrow_table_is_untouched() {
        let mut table = Table::new(&["KIND", "NAME"]);
        table.row(["MeshConfig", "default"]);
        assert_eq!(
            table.render(MAX_WIDTH),
            "KIND        NAME\nMeshConfig  default\n"
        );
    }

    #[test]
    fn short_rows_and_newlines_are_safe() {
        let mut table = Table::new(&["A", "B", "C"]);
        table.row(["x"]);
        table.row(["one\ntwo", "b", "c", "extra"]);
        assert_eq!(
            table.render(MAX_WIDTH),
            "A         B  C\nx\none; two  b  c\n"
        );
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("abc", 0), "");
        assert_eq!(truncate_start("spiffe://d/sa/web", 8), "…/sa/web");
        assert_eq!(truncate_start("abc", 3), "abc");
        assert_eq!(truncate_start("héllo", 2), "…o");
        assert_eq!(truncate_start("abc", 0), "");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_740_830_645_123), "2025-03-01T12:04:05Z");
    }

    #[test]
    fn json_keeps_document_whole() {
        let object = Object {
            kind: "MeshConfig".into(),
            name: "default".into(),
            revision: 3,
            json: r#"{"apiVersion":"weir/v1","kind":"MeshConfig","metadata":{"name":"default"},"spec":{"mtls":"strict"}}"#.into(),
            updated_unix_ms: 1_000,
            ..Default::default()
        };
        let text = objects_json(std::slice::from_ref(&object)).expect("json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(value[0]["revision"], 3);
        assert_eq!(value[0]["document"]["spec"]["mtls"], "strict");
        let doc = decode(&object).expect("decode");
        assert_eq!(doc.key(), "MeshConfig default");
        assert!(document_yaml(&doc).contains("kind: MeshConfig"));
    }
}
