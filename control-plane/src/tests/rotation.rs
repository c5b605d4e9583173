//! Root rotation and token revocation through the Admin API, on both stores: the phases run in
//! order and refuse to run out of it, the leaves follow the signing root, and the CA, its
//! rotation state and the revocations are all still there after a restart.

use tonic::Code;
use weir_proto::admin::v1::{CaInfo, GetCaRequest, RevokeTokenRequest, RotateCaRequest};
use weir_proto::identity::v1::CertifyResponse;

use super::identity::{ORDERS, code, csr, verify};
use super::*;

impl TestServer {
    pub(super) async fn rotate(&self, phase: &str, force: bool) -> Result<CaInfo, tonic::Status> {
        let request = self.authed(RotateCaRequest {
            phase: phase.into(),
            force,
        });
        self.admin()
            .await
            .rotate_ca(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(super) async fn ca(&self) -> CaInfo {
        let request = self.authed(GetCaRequest {});
        self.admin()
            .await
            .get_ca(request)
            .await
            .expect("get ca")
            .into_inner()
    }
}

/// The fingerprint of the root in `role`.
pub(super) fn root(info: &CaInfo, role: &str) -> String {
    info.roots
        .iter()
        .find(|r| r.role == role)
        .map(|r| r.sha256.clone())
        .unwrap_or_else(|| panic!("no {role} root in {info:?}"))
}

/// Whether the leaf of `response` chains to the root whose fingerprint is `root_sha256` (roots
/// of one mesh share a subject, so only the signature tells them apart).
pub(super) fn signed_by(response: &CertifyResponse, root_sha256: &str) -> bool {
    let blocks = |pem: &str| -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|block| block.expect("PEM").contents)
            .collect()
    };
    let Some(root) = blocks(&response.trust_bundle_pem).into_iter().find(|der| {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref()) == root_sha256
    }) else {
        return false;
    };
    let root = rustls_pki_types::CertificateDer::from(root);
    let anchor = webpki::anchor_from_trusted_cert(&root).expect("anchor");
    let chain = blocks(&response.cert_chain_pem);
    let leaf = rustls_pki_types::CertificateDer::from(chain[0].as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf).expect("leaf parses");
    leaf.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

fn refused(result: Result<CaInfo, tonic::Status>, code: Code, words: &str) {
    match result {
        Ok(info) => panic!("expected {code:?} ({words}), the step ran: {info:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{status:?}");
        }
    }
}

async fn a_rotation_runs_its_phases_in_order_and_survives_a_restart(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let (token, _) = server.create_token("shop", "orders", 0).await;
    let before = server.ca().await;
    assert_eq!((before.phase.as_str(), before.roots.len()), ("idle", 1));
    let old_root = root(&before, "signing");
    let old_leaf = server.certify(&token, &csr(ORDERS)).await.expect("certify");

    refused(
        server.rotate("activate", false).await,
        Code::FailedPrecondition,
        "prepare",
    );
    let prepared = server.rotate("prepare", false).await.expect("prepare");
    assert_eq!(prepared.phase, "prepared");
    assert_eq!(root(&prepared, "signing"), old_root);
    let new_root = root(&prepared, "next");
    refused(
        server.rotate("prepare", false).await,
        Code::FailedPrecondition,
        "already prepared",
    );
    // Still signed by the old root, and the bundle now holds both.
    let during = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    assert!(signed_by(&during, &old_root) && !signed_by(&during, &new_root));
    verify(&during);

    let active = server.rotate("activate", false).await.expect("activate");
    assert_eq!(active.phase, "activated");
    assert_eq!(active.generation, before.generation + 1);
    assert_eq!(root(&active, "signing"), new_root);
    assert_eq!(root(&active, "previous"), old_root);
    let after = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    assert!(
        signed_by(&after, &new_root) && !signed_by(&after, &old_root),
        "leaves come from the new root after activate"
    );
    assert_eq!(after.ca_generation, active.generation);
    verify(&after);
    // A leaf of the old root still verifies while the old root is in the bundle.
    verify(&CertifyResponse {
        trust_bundle_pem: after.trust_bundle_pem.clone(),
        ..old_leaf.clone()
    });
    refused(
        server.rotate("finish", false).await,
        Code::FailedPrecondition,
        "--force",
    );

    // A restart mid-rotation keeps the phase and both roots.
    server.stop().await;
    let server = TestServer::start_on(dir.path(), &store).await;
    let restarted = server.ca().await;
    assert_eq!(restarted.phase, "activated");
    assert_eq!(restarted.generation, active.generation);
    assert_eq!(root(&restarted, "signing"), new_root);
    assert_eq!(root(&restarted, "previous"), old_root);

    let finished = server.rotate("finish", true).await.expect("finish");
    assert_eq!((finished.phase.as_str(), finished.roots.len()), ("idle", 1));
    assert_eq!(root(&finished, "signing"), new_root);
    let last = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    assert!(signed_by(&last, &new_root));
    assert!(
        !signed_by(
            &CertifyResponse {
                trust_bundle_pem: last.trust_bundle_pem.clone(),
                ..old_leaf
            },
            &old_root
        ),
        "the old root left the bundle"
    );
    server.stop().await;
}

async fn a_revoked_token_stays_revoked_across_a_restart(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let (token, id) = server.create_token("shop", "orders", 0).await;
    let (kept, _) = server.create_token("shop", "orders", 0).await;
    server.certify(&token, &csr(ORDERS)).await.expect("certify");
    server
        .admin()
        .await
        .revoke_token(server.authed(RevokeTokenRequest { id: id.clone() }))
        .await
        .expect("revoke");
    server.stop().await;

    let server = TestServer::start_on(dir.path(), &store).await;
    let (refused, message) = code(server.certify(&token, &csr(ORDERS)).await);
    assert_eq!(refused, Code::Unauthenticated, "{message}");
    assert!(message.contains("revoked"), "{message}");
    server
        .certify(&kept, &csr(ORDERS))
        .await
        .expect("the other token still works");
    server.stop().await;
}

on_both_stores!(
    a_rotation_runs_its_phases_in_order_and_survives_a_restart,
    a_revoked_token_stays_revoked_across_a_restart
);
