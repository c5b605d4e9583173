//! Round trips and Kubernetes' YAML 1.1 reading of scalars, quoting, nesting, anchors and
//! errors.

use serde_norway::{Mapping, Value};

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
