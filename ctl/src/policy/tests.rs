//! Output formats and offline checks of the policy commands: diffs, apply lines, history
//! actions, YAML that `apply -f` takes back, empty input.

use weir_proto::admin::v1::Object;

use super::diff::document_diff;
use super::get::objects_yaml;
use super::history::{actions, history_table};
use super::*;

const POLICY: &str = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec: { service: payments, timeouts: { request: 2s } }
";

fn doc(text: &str) -> Document {
    weir_policy::parse_str("test.yaml", text)
        .expect("valid")
        .remove(0)
}

#[test]
fn diff_of_equal_documents_is_empty() {
    let a = doc(POLICY);
    // Comments and flow style do not count as differences.
    let b = doc(&format!("# comment\n{}", POLICY.replace("2s", "2000ms")));
    assert_eq!(document_diff(Some(&a), &b), None);
}

#[test]
fn diff_shows_changed_lines() {
    let live = doc(POLICY);
    let file = doc(&POLICY.replace("2s", "3s"));
    let text = document_diff(Some(&live), &file).expect("differs");
    assert!(text.starts_with(
        "--- live/ServicePolicy shop/payments\n+++ file/ServicePolicy shop/payments\n"
    ));
    assert!(text.contains("\n-    request: 2s\n"), "{text}");
    assert!(text.contains("\n+    request: 3s\n"), "{text}");
}

#[test]
fn diff_of_new_document_adds_everything() {
    let file = doc(POLICY);
    let text = document_diff(None, &file).expect("new");
    assert!(text.starts_with("--- live/ServicePolicy shop/payments (new)\n"));
    assert!(text.contains("+kind: ServicePolicy"));
    assert!(!text.lines().skip(2).any(|l| l.starts_with('-')));
}

#[test]
fn apply_output() {
    let result = |action: &str, revision| ApplyResult {
        kind: "ServicePolicy".into(),
        namespace: "shop".into(),
        name: "payments".into(),
        action: action.into(),
        revision,
    };
    assert_eq!(
        apply_lines(&[result("configured", 3)], false),
        "servicepolicy shop/payments configured (revision 3)\n"
    );
    assert_eq!(
        apply_lines(&[result("created", 0)], true),
        "servicepolicy shop/payments created (dry run)\n"
    );
    let mc = ApplyResult {
        kind: "MeshConfig".into(),
        name: "default".into(),
        action: "unchanged".into(),
        revision: 1,
        ..Default::default()
    };
    assert_eq!(
        apply_lines(&[mc], false),
        "meshconfig default unchanged (revision 1)\n"
    );
}

#[test]
fn history_actions() {
    let rev = |revision, deleted| Object {
        revision,
        deleted,
        ..Default::default()
    };
    let revisions = [rev(1, false), rev(2, false), rev(3, true), rev(4, false)];
    assert_eq!(
        actions(&revisions),
        ["created", "changed", "deleted", "created"]
    );
    assert_eq!(actions(&[rev(7, false)]), ["changed"]);
    let table = history_table(&revisions);
    assert!(table.starts_with("REVISION  UPDATED  ACTION\n1         -        created\n"));
}

#[test]
fn get_yaml_round_trips() {
    let d = doc(POLICY);
    let object = Object {
        kind: "ServicePolicy".into(),
        namespace: "shop".into(),
        name: "payments".into(),
        revision: 2,
        json: serde_json::to_string(&d).expect("json"),
        ..Default::default()
    };
    let yaml = objects_yaml(&[object.clone(), object]).expect("yaml");
    // Two documents with the same key fail the set check, so parse each half alone.
    let first = yaml.split("---\n").next().unwrap_or_default();
    assert_eq!(doc(first), d);
    assert_eq!(yaml.matches("kind: ServicePolicy").count(), 2);
}

#[test]
fn empty_input_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty.yaml");
    std::fs::write(&file, "# nothing\n").expect("write");
    let err = load(&[file]).expect_err("empty");
    assert!(
        err.to_string().starts_with("no documents found in"),
        "{err}"
    );
}
