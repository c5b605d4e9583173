//! The trace as `weirctl trace` sees it, whichever Jaeger API it came from, and its tree.
//!
//! Both wire formats (Jaeger's v1 JSON and api_v3's OTLP JSON) are reduced to [`Trace`]; the
//! renderer and the critical path only ever see this shape, so they are tested once.

use std::collections::HashMap;

/// Span attribute the proxy sets on each try of a call (1 for the first, 2 for the first retry).
pub const ATTEMPT_TAG: &str = "weir.attempt";

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub id: String,
    pub spans: Vec<Span>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub id: String,
    /// The span this one is a child of, as the reporter named it (it may be missing from the
    /// trace: see [`Tree::orphan`]).
    pub parent: Option<String>,
    pub service: String,
    pub name: String,
    pub start_us: u64,
    pub duration_us: u64,
    pub error: bool,
    pub http_status: Option<u16>,
    pub attempt: Option<u32>,
    pub kind: Kind,
    /// The service a client span called (`peer.service`, else `server.address`).
    pub peer: Option<String>,
}

/// The span's role in a hop: a caller's CLIENT span or the callee's SERVER span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
    #[default]
    Other,
}

impl Kind {
    /// OTLP's `SpanKind` numbers (2 server, 3 client) or names; Jaeger's `span.kind` tag.
    pub fn parse(text: &str) -> Kind {
        match text.trim().to_ascii_lowercase().as_str() {
            "3" | "client" | "span_kind_client" => Kind::Client,
            "2" | "server" | "span_kind_server" => Kind::Server,
            _ => Kind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Server => "server",
            Kind::Other => "other",
        }
    }
}

impl Span {
    pub fn end_us(&self) -> u64 {
        self.start_us.saturating_add(self.duration_us)
    }
}

/// A tag or attribute value, as far as the renderer cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Float(f64),
}

impl Value {
    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Str(s) => s.trim().parse().ok(),
            // Some SDKs report every number as a double.
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    fn is_true(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Str(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }
}

/// What a span's tags say about its outcome. Tags are folded in one at a time so neither parser
/// has to collect them first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub error: bool,
    pub http_status: Option<u16>,
    pub attempt: Option<u32>,
    pub kind: Kind,
    pub peer: Option<String>,
    /// `server.address`, the peer when no `peer.service` is given.
    address: Option<String>,
}

impl Outcome {
    /// Error when any convention says so: OpenTracing's `error=true`, OpenTelemetry's status
    /// (which Jaeger turns into `otel.status_code`), or a 5xx answer (old and new semconv keys).
    pub fn tag(&mut self, key: &str, value: &Value) {
        match key {
            "error" => self.error |= value.is_true(),
            "otel.status_code" => {
                self.error |= matches!(value, Value::Str(s) if s.eq_ignore_ascii_case("ERROR"));
            }
            "http.status_code" | "http.response.status_code" => {
                if let Some(status) = value.as_int().and_then(|n| u16::try_from(n).ok()) {
                    self.http_status = Some(status);
                    self.error |= status >= 500;
                }
            }
            ATTEMPT_TAG => self.attempt = value.as_int().and_then(|n| u32::try_from(n).ok()),
            "span.kind" => {
                if let Value::Str(s) = value {
                    self.kind = Kind::parse(s);
                }
            }
            "peer.service" | "server.address" => {
                if let Value::Str(s) = value {
                    let slot = if key == "peer.service" {
                        &mut self.peer
                    } else {
                        &mut self.address
                    };
                    *slot = Some(s.clone()).filter(|s| !s.is_empty());
                }
            }
            _ => {}
        }
    }

    /// The peer a client span called.
    pub fn peer(&self) -> Option<String> {
        self.peer.clone().or_else(|| self.address.clone())
    }
}

// === impl Tree ===

/// Spans in display order: each root, then its children by start time, depth first.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `(span index, depth)` in display order; every span appears exactly once.
    pub rows: Vec<(usize, usize)>,
    /// The parent each span is drawn under (`None` for roots, including orphans).
    pub parent: Vec<Option<usize>>,
    /// Children of each span, by start time.
    pub children: Vec<Vec<usize>>,
    /// Roots in start order: the true roots first, then orphans.
    pub roots: Vec<usize>,
    /// Spans that name a parent the trace does not have (not reported yet, dropped, or sampled
    /// away); they are drawn as extra roots.
    pub orphan: Vec<bool>,
}

impl Tree {
    pub fn new(trace: &Trace) -> Tree {
        let spans = &trace.spans;
        let n = spans.len();
        let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (i, span) in spans.iter().enumerate() {
            // A repeated id (e.g. Zipkin-style shared client/server spans) keeps the first.
            by_id.entry(span.id.as_str()).or_insert(i);
        }
        let mut parent = vec![None; n];
        let mut orphan = vec![false; n];
        for (i, span) in spans.iter().enumerate() {
            match span.parent.as_deref().map(|p| by_id.get(p).copied()) {
                None => {}
                Some(Some(p)) if p != i => parent[i] = Some(p),
                Some(_) => orphan[i] = true,
            }
        }
        let by_start = |a: &usize, b: &usize| {
            let (x, y) = (&spans[*a], &spans[*b]);
            (x.start_us, std::cmp::Reverse(x.duration_us), *a).cmp(&(
                y.start_us,
                std::cmp::Reverse(y.duration_us),
                *b,
            ))
        };
        let mut children = vec![Vec::new(); n];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        for list in &mut children {
            list.sort_by(by_start);
        }
        let mut roots: Vec<usize> = (0..n).filter(|i| parent[*i].is_none()).collect();
        roots.sort_by(|a, b| orphan[*a].cmp(&orphan[*b]).then_with(|| by_start(a, b)));

        let mut tree = Tree {
            rows: Vec::with_capacity(n),
            parent,
            children,
            roots: Vec::new(),
            orphan,
        };
        let mut seen = vec![false; n];
        for root in roots {
            tree.walk(root, &mut seen);
        }
        // Spans still unseen sit on a parent cycle (bad data): cut the cycle at its earliest
        // span so every span is still shown once.
        while let Some(i) = (0..n).filter(|i| !seen[*i]).min_by(by_start) {
            if let Some(p) = tree.parent[i].take() {
                tree.children[p].retain(|c| *c != i);
            }
            tree.orphan[i] = true;
            tree.walk(i, &mut seen);
        }
        tree
    }

    /// Depth first without recursion: a trace can be thousands of spans deep.
    fn walk(&mut self, root: usize, seen: &mut [bool]) {
        self.roots.push(root);
        let mut stack = vec![(root, 0)];
        while let Some((i, depth)) = stack.pop() {
            if seen[i] {
                continue;
            }
            seen[i] = true;
            self.rows.push((i, depth));
            stack.extend(self.children[i].iter().rev().map(|c| (*c, depth + 1)));
        }
    }
}

/// A plain span for tests of the tree and the critical path.
#[cfg(test)]
pub(crate) fn span(id: &str, parent: Option<&str>, start: u64, duration: u64) -> Span {
    Span {
        id: id.into(),
        parent: parent.map(Into::into),
        service: "svc".into(),
        name: format!("op-{id}"),
        start_us: start,
        duration_us: duration,
        error: false,
        http_status: None,
        attempt: None,
        kind: Kind::Other,
        peer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(spans: Vec<Span>) -> Vec<(String, usize)> {
        let trace = Trace {
            id: "t".into(),
            spans,
        };
        let tree = Tree::new(&trace);
        tree.rows
            .iter()
            .map(|(i, d)| (trace.spans[*i].id.clone(), *d))
            .collect()
    }

    #[test]
    fn children_by_start_time() {
        let rows = order(vec![
            span("c", Some("a"), 50, 10),
            span("b", Some("a"), 10, 10),
            span("d", Some("b"), 12, 1),
            span("a", None, 0, 100),
        ]);
        let expect = [("a", 0), ("b", 1), ("d", 2), ("c", 1)];
        assert_eq!(rows, expect.map(|(s, d)| (s.to_string(), d)));
    }

    #[test]
    fn orphans_and_cycles_become_roots() {
        let trace = Trace {
            id: "t".into(),
            spans: vec![
                span("a", None, 0, 100),
                span("x", Some("missing"), 5, 10),
                span("p", Some("q"), 20, 1),
                span("q", Some("p"), 21, 1),
                span("s", Some("s"), 30, 1),
            ],
        };
        let tree = Tree::new(&trace);
        assert_eq!(tree.rows.len(), 5, "every span once");
        let ids: Vec<&str> = tree
            .roots
            .iter()
            .map(|r| trace.spans[*r].id.as_str())
            .collect();
        assert_eq!(ids, ["a", "x", "s", "p"]);
        assert!(!tree.orphan[0] && tree.orphan[1] && tree.orphan[2] && tree.orphan[4]);
    }

    #[test]
    fn outcome_from_tags() {
        let mut o = Outcome::default();
        o.tag("http.status_code", &Value::Int(503));
        o.tag(ATTEMPT_TAG, &Value::Str("2".into()));
        assert_eq!(
            (o.error, o.http_status, o.attempt),
            (true, Some(503), Some(2))
        );
        let mut o = Outcome::default();
        o.tag("http.response.status_code", &Value::Float(404.0));
        o.tag("error", &Value::Bool(false));
        assert_eq!((o.error, o.http_status), (false, Some(404)));
        o.tag("otel.status_code", &Value::Str("ERROR".into()));
        assert!(o.error);
        let mut o = Outcome::default();
        o.tag("http.status_code", &Value::Int(-1));
        assert_eq!(o, Outcome::default());
    }
}
