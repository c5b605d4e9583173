//! The span file: OTLP/JSON lines appended to one path, rotated to `PATH.1` at a size limit,
//! so the disk holds at most two files of `max_bytes` each.
//!
//! All of it is blocking IO, run by the export task in `spawn_blocking`, never on the hot
//! path. Readers tailing the file see whole lines: each line is one `write_all` of
//! `json\n`, and a write that fails half way is cut back off the file.
//!
//! The path is looked up once per batch (one `stat`): when the file was moved or deleted
//! behind the writer (logrotate, an emptied volume, a removed directory), the next batch
//! reopens it instead of writing into an unlinked inode forever.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// The smallest `max_bytes`: a few spans per line must fit (one is about 600 bytes).
pub const MIN_FILE_BYTES: u64 = 4096;

/// Where and how much: `--trace-file` and `--trace-file-max-bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Neither the file nor its one rotated predecessor grows past this.
    pub max_bytes: u64,
}

impl FileConfig {
    pub fn new(path: impl Into<PathBuf>) -> FileConfig {
        FileConfig {
            path: path.into(),
            max_bytes: 16 << 20,
        }
    }
}

/// What one batch came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Written {
    pub spans: u64,
    /// Spans not on disk, and why (the first error of the batch).
    pub failed: u64,
    pub error: Option<String>,
}

pub(crate) struct SpanFile {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    open: Option<Open>,
}

struct Open {
    file: File,
    /// Bytes in the file, as this writer knows them: where a failed write is cut back to.
    len: u64,
    /// The inode opened, to notice the path now names another file (or none).
    id: (u64, u64),
}

impl SpanFile {
    pub(crate) fn new(config: &FileConfig) -> SpanFile {
        let mut rotated = config.path.clone().into_os_string();
        rotated.push(".1");
        SpanFile {
            path: config.path.clone(),
            rotated: rotated.into(),
            max_bytes: config.max_bytes.max(MIN_FILE_BYTES),
            open: None,
        }
    }

    /// Opens (creating) the file now: a path that cannot be written at start is a
    /// configuration error worth refusing to start for.
    pub(crate) fn open_now(&mut self) -> io::Result<()> {
        self.ensure_open().map(|_| ())
    }

    /// Appends `spans` as one line, or as several when one would not fit in `max_bytes`
    /// (each line is a whole request, so readers need not know). A single span too big for
    /// the limit on its own is dropped.
    pub(crate) fn append(
        &mut self,
        resource: &Resource,
        scope: &InstrumentationScope,
        spans: Vec<Span>,
    ) -> Written {
        let mut written = Written::default();
        let mut pending = vec![spans];
        while let Some(spans) = pending.pop() {
            let count = spans.len() as u64;
            if count == 0 {
                continue;
            }
            let request = request(resource, scope, spans);
            let line = match crate::json::line(&request) {
                Ok(line) => line,
                Err(e) => {
                    written.failed += count;
                    written
                        .error
                        .get_or_insert_with(|| format!("spans as OTLP/JSON: {e}"));
                    continue;
                }
            };
            if line.len() as u64 > self.max_bytes {
                let mut spans = take_spans(request);
                if spans.len() > 1 {
                    let tail = spans.split_off(spans.len() / 2);
                    // Popped from the end: the first half goes out first.
                    pending.push(tail);
                    pending.push(spans);
                } else {
                    written.failed += count;
                    written.error.get_or_insert_with(|| {
                        format!("a span does not fit in {} bytes", self.max_bytes)
                    });
                }
                continue;
            }
            match self.write_line(&line) {
                Ok(()) => written.spans += count,
                Err(e) => {
                    written.failed += count;
                    written
                        .error
                        .get_or_insert_with(|| format!("{}: {e}", self.path.display()));
                }
            }
        }
        written
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        let open = self.ensure_open()?;
        if open.len > 0 && open.len + len > self.max_bytes {
            self.rotate()?;
        }
        let open = self.ensure_open()?;
        match open.file.write_all(line) {
            Ok(()) => {
                open.len += len;
                Ok(())
            }
            Err(e) => {
                // A partial line (disk full mid-write) would glue onto the next one; cut it
                // off. If even that fails, the reopen on the next batch starts over.
                let _ = open.file.set_len(open.len);
                self.open = None;
                Err(e)
            }
        }
    }

    /// `PATH` becomes `PATH.1` (replacing the previous one) and a new `PATH` is started.
    fn rotate(&mut self) -> io::Result<()> {
        self.open = None;
        std::fs::rename(&self.path, &self.rotated)
    }

    /// The open file, (re)opened when there is none or the path no longer names it.
    fn ensure_open(&mut self) -> io::Result<&mut Open> {
        let current = match (&self.open, std::fs::metadata(&self.path)) {
            (Some(open), Ok(meta)) => (meta.dev(), meta.ino()) == open.id,
            _ => false,
        };
        if !current {
            self.open = None;
            self.open = Some(Open::at(&self.path)?);
        }
        self.open
            .as_mut()
            .ok_or_else(|| io::Error::other("span file not open"))
    }
}

impl Open {
    fn at(path: &Path) -> io::Result<Open> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let meta = file.metadata()?;
        let mut len = meta.len();
        if len > 0 {
            // A writer killed mid-line left it unterminated: end it, so the next line is
            // whole (the broken one stays unparseable, as it already was).
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                len += 1;
            }
        }
        Ok(Open {
            file,
            len,
            id: (meta.dev(), meta.ino()),
        })
    }
}

fn request(
    resource: &Resource,
    scope: &InstrumentationScope,
    spans: Vec<Span>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope.clone()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The spans back out of a request whose line turned out too big.
fn take_spans(request: ExportTraceServiceRequest) -> Vec<Span> {
    request
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::span::{SpanKind, SpanRecord};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "weir-trace-{label}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn span(n: u64) -> Span {
        let ctx = crate::start_or_continue(&http::HeaderMap::new(), 1.0, n + 1);
        let mut r = SpanRecord::new(
            &ctx,
            SpanKind::Server,
            http::Method::GET,
            UNIX_EPOCH + Duration::from_secs(n),
        );
        r.path = Some(http::uri::PathAndQuery::from_static("/orders/list"));
        r.status_code = Some(200);
        r.to_proto()
    }

    fn scope() -> (Resource, InstrumentationScope) {
        let resource = crate::Resource {
            service_name: "orders".into(),
            ..Default::default()
        }
        .to_proto();
        let scope = InstrumentationScope {
            name: "weir".into(),
            ..Default::default()
        };
        (resource, scope)
    }

    /// Every line of `path` parsed, checking each is whole; the spans' start seconds.
    pub(crate) fn read_spans(path: &Path) -> Vec<u64> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        let mut starts = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            for s in v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
            {
                let nanos: u64 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
                starts.push(nanos / 1_000_000_000);
            }
        }
        starts
    }

    fn config(dir: &TempDir) -> FileConfig {
        FileConfig {
            path: dir.0.join("spans.jsonl"),
            max_bytes: MIN_FILE_BYTES,
        }
    }

    #[test]
    fn rotation_keeps_whole_lines_in_at_most_two_files_under_the_limit() {
        let dir = TempDir::new("rotate");
        let config = config(&dir);
        let mut file = SpanFile::new(&config);
        let (resource, scope) = scope();
        for n in 0..40 {
            let w = file.append(&resource, &scope, vec![span(n)]);
            assert_eq!((w.spans, w.failed), (1, 0), "{w:?}");
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["spans.jsonl", "spans.jsonl.1"]);
        let rotated = config.path.with_file_name("spans.jsonl.1");
        for p in [&config.path, &rotated] {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len <= MIN_FILE_BYTES && len > 0, "{}: {len}", p.display());
        }
        // The newest spans, oldest first, with no gap between the two files.
        let mut all = read_spans(&rotated);
        all.extend(read_spans(&config.path));
        let first = 40 - all.len() as u64;
        assert!(first > 0, "rotated at least twice: {all:?}");
        assert_eq!(all, (first..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_too_big_for_one_line_is_split_into_lines_that_fit() {
        let dir = TempDir::new("split");
        let config = config(&dir);
        let mut file = SpanFile::new(&config);
        let (resource, scope) = scope();
        let w = file.append(&resource, &scope, (0..12).map(span).collect());
        assert_eq!((w.spans, w.failed, w.error), (12, 0, None));
        let rotated = config.path.with_file_name("spans.jsonl.1");
        let mut all = read_spans(&rotated);
        all.extend(read_spans(&config.path));
        assert_eq!(all, (0..12).collect::<Vec<_>>(), "in order, none lost");
        let text = std::fs::read_to_string(&config.path).unwrap();
        assert!(text.lines().all(|l| l.len() < MIN_FILE_BYTES as usize));
    }

    #[test]
    fn a_removed_directory_fails_the_batch_and_its_return_is_picked_up() {
        let dir = TempDir::new("gone");
        let config = FileConfig {
            path: dir.0.join("sub/spans.jsonl"),
            max_bytes: 1 << 20,
        };
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        let mut file = SpanFile::new(&config);
        file.open_now().unwrap();
        let (resource, scope) = scope();
        assert_eq!(file.append(&resource, &scope, vec![span(1)]).spans, 1);

        std::fs::remove_dir_all(dir.0.join("sub")).unwrap();
        let w = file.append(&resource, &scope, vec![span(2), span(3)]);
        assert_eq!((w.spans, w.failed), (0, 2));
        assert!(w.error.unwrap().contains("spans.jsonl"));

        std::fs::create_dir(dir.0.join("sub")).unwrap();
        let w = file.append(&resource, &scope, vec![span(4)]);
        assert_eq!((w.spans, w.failed), (1, 0));
        assert_eq!(read_spans(&config.path), [4]);
    }

    #[test]
    fn a_full_disk_fails_the_batch_without_panicking() {
        // /dev/full: every write fails with ENOSPC.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let mut file = SpanFile::new(&FileConfig::new("/dev/full"));
        let (resource, scope) = scope();
        for _ in 0..2 {
            let w = file.append(&resource, &scope, vec![span(1)]);
            assert_eq!((w.spans, w.failed), (0, 1));
            assert!(w.error.unwrap().contains("/dev/full"));
        }
    }

    #[test]
    fn an_unterminated_last_line_is_ended_before_appending() {
        let dir = TempDir::new("torn");
        let config = config(&dir);
        std::fs::write(&config.path, "{\"resourceSpans\":[{\"reso").unwrap();
        let mut file = SpanFile::new(&config);
        let (resource, scope) = scope();
        assert_eq!(file.append(&resource, &scope, vec![span(7)]).spans, 1);
        let text = std::fs::read_to_string(&config.path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(last).is_ok(),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
    }
}
