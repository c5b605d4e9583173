//! The critical path: the spans whose work set the trace's total latency.
//!
//! Same walk as Jaeger UI's critical path (Uber's "CRISP" idea): start at the root with the
//! whole of its time to explain; the child that finished last within that time is on the path,
//! and the walk goes down into it. When a span has no child left that finished in time, the
//! rest of that window was its own work, so the walk climbs back to its parent, whose time is now
//! only explained up to when the child started, and looks for an earlier child that finished
//! before then. So of two calls made in parallel only the one that ended last is on the path,
//! while calls made one after another (a failed try, then its retry) all are.

use super::model::{Trace, Tree};

/// One flag per span of `trace` (same order): on the critical path or not.
pub fn critical_path(trace: &Trace, tree: &Tree) -> Vec<bool> {
    let spans = &trace.spans;
    let mut on = vec![false; spans.len()];
    // An orphan may end later than the root, but the root is what the caller waited for.
    let has_root = tree.roots.iter().any(|r| !tree.orphan[*r]);
    let roots = tree.roots.iter().copied();
    let roots = roots.filter(|r| !has_root || !tree.orphan[*r]);
    let Some(mut current) = latest_clamped(trace, roots, u64::MAX, u64::MAX) else {
        return on;
    };
    let mut bound = spans[current].end_us();
    // Every step marks a new span or climbs one level, so this is only a guard against bugs.
    for _ in 0..=spans.len().saturating_mul(3) {
        on[current] = true;
        let end = spans[current].end_us();
        let candidates = tree.children[current].iter().copied().filter(|c| !on[*c]);
        // A child reported as ending after its parent (clock skew) counts as ending with it.
        match latest_clamped(trace, candidates, bound, end) {
            Some(child) => {
                current = child;
                bound = spans[child].end_us();
            }
            None => match tree.parent[current] {
                Some(parent) => {
                    bound = spans[current].start_us;
                    current = parent;
                }
                None => break,
            },
        }
    }
    on
}

/// The span that ends last but not after `bound`; ties go to the longest, then the first.
fn latest_clamped(
    trace: &Trace,
    spans: impl Iterator<Item = usize>,
    bound: u64,
    clamp: u64,
) -> Option<usize> {
    spans
        .filter_map(|i| {
            let end = trace.spans[i].end_us().min(clamp);
            (end <= bound).then_some((i, end))
        })
        .max_by(|(a, end_a), (b, end_b)| {
            let (a_len, b_len) = (trace.spans[*a].duration_us, trace.spans[*b].duration_us);
            end_a.cmp(end_b).then(a_len.cmp(&b_len)).then(b.cmp(a))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Span, span};
    use super::*;

    fn path(spans: Vec<Span>) -> Vec<String> {
        let trace = Trace {
            id: "t".into(),
            spans,
        };
        let tree = Tree::new(&trace);
        let on = critical_path(&trace, &tree);
        tree.rows
            .iter()
            .filter(|(i, _)| on[*i])
            .map(|(i, _)| trace.spans[*i].id.clone())
            .collect()
    }

    #[test]
    fn parallel_calls_only_the_last_to_finish() {
        let got = path(vec![
            span("root", None, 0, 100),
            span("a", Some("root"), 2, 28),
            span("b", Some("root"), 3, 92),
            span("c", Some("b"), 10, 80),
        ]);
        assert_eq!(got, ["root", "b", "c"]);
    }

    #[test]
    fn sequential_calls_all_count() {
        // A failed try, then the retry after a backoff: both cost the caller time.
        let got = path(vec![
            span("root", None, 0, 100),
            span("try1", Some("root"), 5, 30),
            span("server1", Some("try1"), 7, 26),
            span("try2", Some("root"), 60, 35),
            span("side", Some("root"), 40, 30),
        ]);
        assert_eq!(got, ["root", "try1", "server1", "try2"]);
    }

    #[test]
    fn ties_go_to_the_longest() {
        let got = path(vec![
            span("root", None, 0, 100),
            span("short", Some("root"), 50, 40),
            span("long", Some("root"), 10, 80),
        ]);
        assert_eq!(got, ["root", "long"]);
    }

    #[test]
    fn skewed_and_empty_spans_terminate() {
        let got = path(vec![
            span("root", None, 100, 50),
            span("late", Some("root"), 120, 500),
            span("z1", Some("late"), 130, 0),
            span("z2", Some("late"), 130, 0),
        ]);
        assert_eq!(got, ["root", "late", "z1", "z2"]);
        assert!(path(Vec::new()).is_empty());
    }

    #[test]
    fn orphans_do_not_steal_the_path() {
        let got = path(vec![
            span("root", None, 0, 10),
            span("orphan", Some("gone"), 5, 100),
        ]);
        assert_eq!(got, ["root"]);
        let got = path(vec![span("orphan", Some("gone"), 5, 100)]);
        assert_eq!(got, ["orphan"]);
    }
}
