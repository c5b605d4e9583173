//! `--file`: traces from files of OTLP JSON lines, each line one `ExportTraceServiceRequest`
//! in the OTLP/JSON mapping. That is what the OpenTelemetry Collector's `file` exporter and
//! `weir-proxy --trace-file` write; the line format is read by [`jaeger::parse_otlp`], the same
//! code that reads Jaeger's api_v3.
//!
//! Every proxy writes its own file, so spans of one trace are spread over many: all files
//! given (and every `*.json` / `*.jsonl` in a directory given) are read, each with its rotated
//! older part `PATH.1`, and spans are merged by trace id.
//!
//! The files are written while they are read: a last line without its newline is a writer
//! mid-write and is skipped without a word, and only the bytes present when reading starts are
//! read, so a growing file cannot make the run unbounded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::jaeger;
use super::model::Trace;

/// What weirctl reads at once: the traces are held in memory, and a file this size is a
/// proxy that has been writing for days, better searched with Jaeger.
pub const MAX_TOTAL: u64 = 1 << 30;

/// The traces of all files, merged.
#[derive(Debug, Default)]
pub struct Loaded {
    /// One per trace id, in the order first seen.
    pub traces: Vec<Trace>,
    /// Every file read, rotated parts included, in reading order.
    pub files: Vec<PathBuf>,
    /// Lines that were not OTLP JSON (a truncated last line is not counted).
    pub skipped: usize,
    /// `FILE:LINE: why` of the first of them.
    pub first_skipped: Option<String>,
}

impl Loaded {
    /// "a.jsonl, a.jsonl.1 and 3 more": for messages that name what was read.
    pub fn describe(&self) -> String {
        const SHOWN: usize = 3;
        let mut names: Vec<String> = self
            .files
            .iter()
            .take(SHOWN)
            .map(|p| p.display().to_string())
            .collect();
        if self.files.len() > SHOWN {
            names.push(format!("{} more", self.files.len() - SHOWN));
        }
        let files = match names.len() {
            0 => "no files".to_string(),
            1 => names.remove(0),
            _ => {
                let last = names.pop().unwrap_or_default();
                format!("{} and {last}", names.join(", "))
            }
        };
        let traces = match self.traces.len() {
            1 => "1 trace".to_string(),
            n => format!("{n} traces"),
        };
        format!("{files} ({traces})")
    }

    /// The one warning about skipped lines, if any were.
    pub fn warning(&self) -> Option<String> {
        let first = self.first_skipped.as_deref()?;
        let lines = if self.skipped == 1 {
            "line that is"
        } else {
            "lines that are"
        };
        Some(format!(
            "warning: skipped {} {lines} not OTLP JSON (first: {first})",
            self.skipped
        ))
    }
}

/// Reads `paths` (files or directories) and their `.1` parts.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let files = expand(paths)?;
    let mut sizes = Vec::with_capacity(files.len());
    for file in &files {
        let meta =
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        sizes.push(meta.len());
    }
    let total: u64 = sizes.iter().sum();
    if total > MAX_TOTAL {
        bail!(
            "{} files hold {} MiB, more than weirctl reads at once ({} MiB): give fewer files \
             or send the spans to Jaeger and use --service",
            files.len(),
            total >> 20,
            MAX_TOTAL >> 20
        );
    }
    let mut loaded = Loaded::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (file, size) in files.into_iter().zip(sizes) {
        read(&file, size, &mut loaded, &mut index)
            .with_context(|| format!("cannot read {}", file.display()))?;
        loaded.files.push(file);
    }
    Ok(loaded)
}

/// Files to read, each once, a rotated part before the file it was rotated from (older first).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut add = |path: PathBuf| {
        // The same file named twice (a directory and a file in it) must not double its spans.
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !seen.contains(&key) {
            seen.push(key);
            out.push(path);
        }
    };
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("--file {}", path.display()))?;
        let mains = if meta.is_dir() {
            let found = in_dir(path)?;
            if found.is_empty() {
                bail!(
                    "--file {}: the directory has no *.json or *.jsonl files",
                    path.display()
                );
            }
            found
        } else {
            vec![path.clone()]
        };
        for main in mains {
            let rotated = rotated(&main);
            if rotated.is_file() {
                add(rotated);
            }
            add(main);
        }
    }
    Ok(out)
}

/// `*.json` and `*.jsonl` files of `dir`, by name (their `.1` parts are added by the caller).
fn in_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("--file {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("--file {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let wanted =
            !name.starts_with('.') && (name.ends_with(".json") || name.ends_with(".jsonl"));
        if wanted && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn read(
    path: &Path,
    size: u64,
    loaded: &mut Loaded,
    index: &mut HashMap<String, usize>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(File::open(path)?.take(size));
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Without the newline, serde's "line 1 column N" points into this line.
        match jaeger::parse_otlp(line.trim_ascii_end()) {
            Ok(traces) => merge(traces, loaded, index),
            // Only the last line can lack its newline: the writer is still writing it.
            Err(_) if !complete => {}
            Err(err) => {
                loaded.skipped += 1;
                if loaded.first_skipped.is_none() {
                    loaded.first_skipped = Some(format!("{}:{number}: {err:#}", path.display()));
                }
            }
        }
    }
}

fn merge(traces: Vec<Trace>, loaded: &mut Loaded, index: &mut HashMap<String, usize>) {
    for trace in traces {
        match index.get(&trace.id) {
            Some(i) => loaded.traces[*i].spans.extend(trace.spans),
            None => {
                index.insert(trace.id.clone(), loaded.traces.len());
                loaded.traces.push(trace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// One `ExportTraceServiceRequest` line as the proxy writes it.
    fn line(service: &str, trace: &str, span: &str, parent: Option<&str>, start_ms: u64) -> String {
        let parent = parent.map_or_else(String::new, |p| format!(r#""parentSpanId":"{p}","#));
        let start = 1_544_712_660_000_000_000u64 + start_ms * 1_000_000;
        let end = start + 10_000_000;
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeSpans":[{{"scope":{{"name":"weir-proxy"}},"spans":[{{"traceId":"{trace}","spanId":"{span}",{parent}"name":"GET /pay","kind":3,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":[{{"key":"http.response.status_code","value":{{"intValue":"200"}}}},{{"key":"weir.attempt","value":{{"intValue":"1"}}}}],"status":{{}}}}]}}]}}]}}"#
        )
    }

    const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const T2: &str = "0af7651916cd43dd8448eb211c80319c";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        let mut file = File::create(&path).expect("create");
        file.write_all(text.as_bytes()).expect("write");
        path
    }

    #[test]
    fn reads_the_otlp_file_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error_span = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"payment"}}]},"scopeSpans":[{"scope":{"name":"weir-proxy"},"spans":[{"traceId":"4BF92F3577B34DA6A3CE929D0E0E4736","spanId":"00F067AA0BA902B7","parentSpanId":"b7ad6b7169203331","name":"POST /charge","kind":2,"startTimeUnixNano":"1544712660500000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"weir.attempt","value":{"intValue":"2"}}],"status":{"code":2}}]}]}]}"#;
        let text = format!(
            "{}\n\n{error_span}\n{}\n",
            line("gateway", T1, "b7ad6b7169203331", None, 0),
            line("gateway", T2, "1111111111111111", None, 5),
        );
        let path = write(dir.path(), "spans.jsonl", &text);
        let loaded = load(&[path]).expect("load");
        assert_eq!((loaded.skipped, loaded.traces.len()), (0, 2));
        let trace = &loaded.traces[0];
        assert_eq!(trace.id, T1, "hex ids are lower-cased");
        assert_eq!(trace.spans.len(), 2);
        let (root, child) = (&trace.spans[0], &trace.spans[1]);
        assert_eq!(root.parent, None, "no parentSpanId: a root");
        assert_eq!(
            (root.service.as_str(), root.http_status, root.error),
            ("gateway", Some(200), false)
        );
        assert_eq!(
            (root.start_us, root.duration_us),
            (1_544_712_660_000_000, 10_000)
        );
        assert_eq!(child.id, "00f067aa0ba902b7");
        assert_eq!(child.parent.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(
            (child.service.as_str(), child.attempt, child.error),
            ("payment", Some(2), true),
            "status code 2 is STATUS_CODE_ERROR"
        );
        assert_eq!(child.duration_us, 500_000, "string int64 nanoseconds");
    }

    #[test]
    fn refuses_more_than_it_can_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.jsonl", "{}\n");
        // Sparse: no disk is used, but the size is what a long-running proxy leaves.
        let big = File::create(dir.path().join("a.jsonl.1")).expect("create");
        big.set_len(MAX_TOTAL).expect("set_len");
        let err = load(&[dir.path().to_path_buf()])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            err.as_deref().is_some_and(|e| e
                .starts_with("2 files hold 1024 MiB, more than weirctl reads at once (1024 MiB)")),
            "{err:?}"
        );
    }

    #[test]
    fn base64_ids_meet_hex_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        // T1 and span b7ad6b7169203331 as protobuf's JSON mapping writes bytes.
        let text = format!(
            "{}\n{}\n",
            line("a", "S/kvNXezTaajzpKdDg5HNg==", "t61rcWkgMzE=", None, 0),
            line("b", T1, "2222222222222222", Some("b7ad6b7169203331"), 1),
        );
        let loaded = load(&[write(dir.path(), "x.json", &text)]).expect("load");
        assert_eq!(loaded.traces.len(), 1);
        assert_eq!(loaded.traces[0].id, T1);
        assert_eq!(loaded.traces[0].spans[0].id, "b7ad6b7169203331");
    }

    #[test]
    fn truncated_last_line_is_silent_bad_lines_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let whole = line("gateway", T1, "b7ad6b7169203331", None, 0);
        let cut = &whole[..whole.len() / 2];
        let text = format!("{whole}\nnot json\n{{\"resourceSpans\":7}}\n{whole}\n{cut}");
        let path = write(dir.path(), "spans.jsonl", &text);
        let loaded = load(std::slice::from_ref(&path)).expect("load");
        assert_eq!(loaded.traces.len(), 1);
        assert_eq!(loaded.traces[0].spans.len(), 2);
        assert_eq!(loaded.skipped, 2, "the cut last line is not counted");
        let warning = loaded.warning().unwrap_or_default();
        assert!(
            warning.starts_with(&format!(
                "warning: skipped 2 lines that are not OTLP JSON (first: {}:2: expected ident at \
                 line 1 column 2)",
                path.display()
            )),
            "{warning}"
        );
        // A last line that is whole but lacks its newline is read.
        let path = write(dir.path(), "b.jsonl", &whole);
        let loaded = load(&[path]).expect("load");
        assert_eq!((loaded.traces.len(), loaded.warning()), (1, None));
    }

    #[test]
    fn rotated_part_and_other_files_merge_by_trace_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(
            dir.path(),
            "gateway.jsonl",
            &format!("{}\n", line("gateway", T1, "b7ad6b7169203331", None, 0)),
        );
        write(
            dir.path(),
            "gateway.jsonl.1",
            &format!("{}\n", line("gateway", T2, "1111111111111111", None, 0)),
        );
        let b = write(
            dir.path(),
            "payment.jsonl",
            &format!(
                "{}\n",
                line(
                    "payment",
                    T1,
                    "2222222222222222",
                    Some("b7ad6b7169203331"),
                    2
                )
            ),
        );
        write(dir.path(), "notes.txt", "not spans\n");
        let loaded = load(&[a.clone(), b.clone()]).expect("load");
        let names: Vec<String> = loaded
            .files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["gateway.jsonl.1", "gateway.jsonl", "payment.jsonl"]);
        let t1 = loaded.traces.iter().find(|t| t.id == T1).expect("T1");
        let services: Vec<&str> = t1.spans.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(services, ["gateway", "payment"]);
        assert_eq!(loaded.traces.len(), 2);

        // A directory reads the same files once, even when one is also named on its own.
        let again = load(&[dir.path().to_path_buf(), a]).expect("load dir");
        assert_eq!(again.files.len(), 3);
        assert_eq!(again.traces.iter().map(|t| t.spans.len()).sum::<usize>(), 3);
        assert!(
            again.describe().ends_with("(2 traces)"),
            "{}",
            again.describe()
        );

        let empty = tempfile::tempdir().expect("tempdir");
        let err = load(&[empty.path().to_path_buf()])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("no *.json or *.jsonl")));
        let err = load(&[dir.path().join("gone.jsonl")])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("gone.jsonl")));
    }
}
