use tonic::Code;
use weir_proto::admin::v1::{
    ApplyRequest, DeleteRequest, GetRequest, HistoryRequest, Object, RollbackRequest,
    VersionRequest,
};

use super::*;

fn get(kind: &str, namespace: &str, name: &str) -> GetRequest {
    GetRequest {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn history(kind: &str, namespace: &str, name: &str) -> HistoryRequest {
    HistoryRequest {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

async fn get_all(server: &TestServer, kind: &str) -> Vec<Object> {
    let mut admin = server.admin().await;
    admin
        .get(server.authed(get(kind, "", "")))
        .await
        .expect("get")
        .into_inner()
        .objects
}

fn actions(response: &ApplyResponse) -> Vec<(String, String, u64)> {
    response
        .results
        .iter()
        .map(|r| (r.name.clone(), r.action.clone(), r.revision))
        .collect()
}

const POLICY_V2: &str = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments
  timeouts: { request: 5s }
";

async fn apply_get_history_rollback_delete(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let mut admin = server.admin().await;

    let first = server.apply(POLICY).await.expect("apply");
    assert_eq!(
        actions(&first),
        [
            ("payments".into(), "created".into(), 1),
            ("default".into(), "created".into(), 1)
        ]
    );
    let second = server.apply(POLICY_V2).await.expect("apply v2");
    assert_eq!(
        actions(&second),
        [("payments".into(), "configured".into(), 2)]
    );
    assert!(second.version > first.version);

    // Aliases and any case name the same kind; the namespace filter applies.
    for kind in ["ServicePolicy", "servicepolicy", "sp", "SP"] {
        let objects = get_all(&server, kind).await;
        assert_eq!(objects.len(), 1, "{kind}");
        assert_eq!(objects[0].revision, 2);
        assert!(objects[0].json.contains("5s"), "{}", objects[0].json);
    }
    let none = admin
        .get(server.authed(get("sp", "other", "")))
        .await
        .expect("get")
        .into_inner();
    assert!(none.objects.is_empty());
    let status = admin.get(server.authed(get("", "", ""))).await.err();
    assert_eq!(status.map(|s| s.code()), Some(Code::InvalidArgument));

    let rolled = admin
        .rollback(server.authed(RollbackRequest {
            kind: "sp".into(),
            namespace: "shop".into(),
            name: "payments".into(),
            to_revision: 1,
        }))
        .await
        .expect("rollback")
        .into_inner();
    let object = rolled.object.expect("object");
    assert_eq!(object.revision, 3);
    assert!(object.json.contains("2s"), "{}", object.json);
    assert!(rolled.version > second.version);

    let deleted = admin
        .delete(server.authed(DeleteRequest {
            kind: "servicepolicy".into(),
            namespace: "shop".into(),
            name: "payments".into(),
        }))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.revision, 4);
    assert!(get_all(&server, "sp").await.is_empty());
    let again = admin
        .delete(server.authed(DeleteRequest {
            kind: "sp".into(),
            namespace: "shop".into(),
            name: "payments".into(),
        }))
        .await
        .err();
    assert_eq!(again.map(|s| s.code()), Some(Code::NotFound));

    let revisions = admin
        .history(server.authed(history("sp", "shop", "payments")))
        .await
        .expect("history")
        .into_inner()
        .revisions;
    let summary: Vec<(u64, bool)> = revisions.iter().map(|r| (r.revision, r.deleted)).collect();
    assert_eq!(summary, [(1, false), (2, false), (3, false), (4, true)]);
    assert_eq!(revisions[0].json, revisions[2].json);
    assert!(revisions[3].json.is_empty());

    // A deletion or an unknown revision cannot be rolled back to.
    for to_revision in [4, 99] {
        let err = admin
            .rollback(server.authed(RollbackRequest {
                kind: "sp".into(),
                namespace: "shop".into(),
                name: "payments".into(),
                to_revision,
            }))
            .await
            .err();
        assert_eq!(err.map(|s| s.code()), Some(Code::FailedPrecondition));
    }
    // Re-creating after a delete continues the revision count.
    let recreated = server.apply(POLICY_V2).await.expect("re-apply");
    assert_eq!(
        actions(&recreated),
        [("payments".into(), "created".into(), 5)]
    );

    let version = admin
        .version(server.authed(VersionRequest {}))
        .await
        .expect("version")
        .into_inner();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

async fn history_keeps_the_last_twenty_revisions(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    for ms in 1..=25 {
        let yaml = POLICY_V2.replace("5s", &format!("{ms}ms"));
        server.apply(&yaml).await.expect("apply");
    }
    let revisions = server
        .admin()
        .await
        .history(server.authed(history("sp", "shop", "payments")))
        .await
        .expect("history")
        .into_inner()
        .revisions;
    let numbers: Vec<u64> = revisions.iter().map(|r| r.revision).collect();
    assert_eq!(numbers, (6..=25).collect::<Vec<_>>());
    server.stop().await;
}

async fn invalid_apply_reports_every_error_and_changes_nothing(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(POLICY).await.expect("apply");
    let invalid = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments
  retries: { attempts: 2, budget: { percent: 250 } }
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: Bad_Name, namespace: shop }
spec: { addresses: [] }
";
    let expected = weir_policy::parse_str("test.yaml", invalid).expect_err("invalid");
    assert!(expected.len() >= 3, "{expected}");
    let status = server.apply(invalid).await.expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), expected.to_string());
    assert!(status.message().contains("spec.retries.budget.percent"));

    let policies = get_all(&server, "sp").await;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].revision, 1);
    assert!(get_all(&server, "endpoints").await.is_empty());
    server.stop().await;
}

async fn apply_is_all_or_nothing_against_the_store(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(POLICY).await.expect("apply");
    // Valid on its own, but a second MeshConfig next to the stored one: the policy change in the
    // same request must not land either.
    let conflicting = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec: { service: orders }
---
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: other }
";
    let status = server.apply(conflicting).await.expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("only one MeshConfig"),
        "{}",
        status.message()
    );
    let names: Vec<String> = get_all(&server, "sp")
        .await
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["payments"]);
    server.stop().await;
}

async fn identical_apply_is_unchanged_and_dry_run_writes_nothing(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let first = server.apply(POLICY).await.expect("apply");
    let again = server.apply(POLICY).await.expect("apply again");
    assert_eq!(
        actions(&again),
        [
            ("payments".into(), "unchanged".into(), 1),
            ("default".into(), "unchanged".into(), 1)
        ]
    );
    assert_eq!(again.version, first.version);

    let dry = server
        .admin()
        .await
        .apply(server.authed(ApplyRequest {
            yaml: POLICY_V2.into(),
            source: "v2.yaml".into(),
            dry_run: true,
        }))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(actions(&dry), [("payments".into(), "configured".into(), 2)]);
    assert_eq!(dry.version, first.version);
    let stored = get_all(&server, "sp").await;
    assert_eq!(stored[0].revision, 1);
    server.stop().await;
}

async fn admin_calls_need_the_token(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let mut admin = server.admin().await;
    let missing = admin.version(VersionRequest {}).await.expect_err("refused");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("admin.token"),
        "{}",
        missing.message()
    );

    let mut wrong = tonic::Request::new(get("sp", "", ""));
    let value = format!("Bearer {}", "0".repeat(64)).parse().expect("value");
    wrong.metadata_mut().insert("authorization", value);
    let wrong = admin.get(wrong).await.expect_err("refused");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let on_disk = std::fs::read_to_string(dir.path().join(crate::TOKEN_FILE)).expect("token file");
    assert_eq!(on_disk.trim(), server.token);
    server.stop().await;
}

async fn store_survives_a_restart(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(POLICY).await.expect("apply");
    let last = server.apply(POLICY_V2).await.expect("apply v2");
    let mut admin = server.admin().await;
    admin
        .delete(server.authed(DeleteRequest {
            kind: "mc".into(),
            namespace: String::new(),
            name: "default".into(),
        }))
        .await
        .expect("delete");
    let before = (
        get_all(&server, "sp").await,
        admin
            .history(server.authed(history("sp", "shop", "payments")))
            .await
            .expect("history")
            .into_inner(),
        admin
            .history(server.authed(history("meshconfig", "", "default")))
            .await
            .expect("history")
            .into_inner(),
    );
    let token = server.token.clone();
    server.stop().await;

    let server = TestServer::start_on(dir.path(), &store).await;
    assert_eq!(server.token, token);
    let mut admin = server.admin().await;
    let after = (
        get_all(&server, "sp").await,
        admin
            .history(server.authed(history("sp", "shop", "payments")))
            .await
            .expect("history")
            .into_inner(),
        admin
            .history(server.authed(history("meshconfig", "", "default")))
            .await
            .expect("history")
            .into_inner(),
    );
    assert_eq!(before, after);
    assert!(get_all(&server, "mc").await.is_empty());
    // Versions never go back, so proxies never see an old number for new content.
    let next = server
        .apply(&POLICY_V2.replace("5s", "6s"))
        .await
        .expect("apply after restart");
    assert!(next.version > last.version);
    assert_eq!(next.results[0].revision, 3);
    server.stop().await;
}

on_both_stores!(
    apply_get_history_rollback_delete,
    history_keeps_the_last_twenty_revisions,
    invalid_apply_reports_every_error_and_changes_nothing,
    apply_is_all_or_nothing_against_the_store,
    identical_apply_is_unchanged_and_dry_run_writes_nothing,
    admin_calls_need_the_token,
    store_survives_a_restart
);
