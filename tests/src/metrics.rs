//! A small parser for the Prometheus text format the proxy's `/metrics` serves.

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses exposition text. Lines that do not parse are skipped rather than
    /// failing: a test asks for specific series and reports what it saw instead.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Sum of every series named `name` whose labels include all of `labels`.
    /// Summing lets a test ask e.g. for all inbound connections whatever the
    /// protocol; a series that does not exist yet counts as 0.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every sample of `name`, for failure messages.
    pub fn describe(&self, name: &str) -> String {
        let lines: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect();
        if lines.is_empty() {
            format!("(no samples named {name})")
        } else {
            lines.join("\n")
        }
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let end = line.find(char::is_whitespace)?;
            (&line[..end], Vec::new(), &line[end..])
        }
    };
    // The value may be followed by a timestamp; take the first field.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums_matching_series() {
        let m = Metrics::parse(
            "# HELP x\n# TYPE weir_connections_total counter\n\
             weir_connections_total{direction=\"inbound\",protocol=\"h2\"} 2\n\
             weir_connections_total{direction=\"inbound\",protocol=\"opaque\"} 1 1700000000\n\
             weir_connections_total{direction=\"outbound\",protocol=\"http1\"} 5\n\
             weir_open_connections 3\n\
             weird{a=\"q\\\"uote,}\"} 1.5\n# EOF\n",
        );
        assert_eq!(
            m.get("weir_connections_total", &[("direction", "inbound")]),
            3.0
        );
        assert_eq!(
            m.get("weir_connections_total", &[("protocol", "opaque")]),
            1.0
        );
        assert_eq!(m.get("weir_open_connections", &[]), 3.0);
        assert_eq!(m.get("weird", &[("a", "q\"uote,}")]), 1.5);
        assert_eq!(m.get("missing", &[]), 0.0);
    }
}
