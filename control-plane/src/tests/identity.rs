//! Identity.Certify against a real server: real rcgen CSRs, tokens from the Admin API, and the
//! returned chain checked with webpki (what rustls in the proxy will do).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use weir_proto::admin::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest};
use weir_proto::identity::v1::identity_client::IdentityClient;
use weir_proto::identity::v1::{CertifyRequest, CertifyResponse};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::ca::{self, Ca};
use crate::identity::CaFiles;

pub(super) const ORDERS: &str = "spiffe://weir.local/ns/shop/sa/orders";

impl TestServer {
    pub(super) async fn create_token(
        &self,
        ns: &str,
        sa: &str,
        ttl_seconds: u64,
    ) -> (String, String) {
        let request = self.authed(CreateTokenRequest {
            namespace: ns.into(),
            service_account: sa.into(),
            ttl_seconds,
        });
        let response = self
            .admin()
            .await
            .create_token(request)
            .await
            .expect("create token")
            .into_inner();
        let info = response.info.expect("token info");
        (response.token, info.id)
    }

    pub(super) async fn certify(
        &self,
        token: &str,
        csr_pem: &str,
    ) -> Result<CertifyResponse, tonic::Status> {
        let mut client = IdentityClient::new(super::channel(&self.url).await);
        // Deliberately without the admin token: Certify must not need it.
        client
            .certify(CertifyRequest {
                token: token.into(),
                csr_pem: csr_pem.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

pub(super) fn csr(uri: &str) -> String {
    let key = KeyPair::generate().expect("key");
    ca::csr_pem(uri, &key).expect("csr")
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|block| block.expect("PEM").contents)
        .collect()
}

pub(super) fn code(result: Result<CertifyResponse, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

/// Checks the chain with webpki for both TLS roles and returns the leaf's URI SANs and its
/// validity (not before, not after) in Unix seconds.
pub(super) fn verify(response: &CertifyResponse) -> (Vec<String>, i64, i64) {
    let chain = ders(&response.cert_chain_pem);
    let bundle = ders(&response.trust_bundle_pem);
    assert!(!chain.is_empty() && !bundle.is_empty());
    let anchors: Vec<_> = bundle
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .expect("anchor")
                .to_owned()
        })
        .collect();
    let leaf_der = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<_> = chain[1..]
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).expect("leaf parses");
    let algs = [webpki::ring::ECDSA_P256_SHA256];
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            &algs,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("chain verifies against the bundle");
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).expect("x509");
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let ku = cert.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert!(!cert.is_ca());
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("san present");
    let uris = san
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => uri.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    let validity = cert.validity();
    (
        uris,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn certify_issues_a_spiffe_leaf(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(3600);
    let server = TestServer::start_on_with(dir.path(), &store, |c| c.cert_ttl = ttl).await;
    let (token, _) = server.create_token("shop", "orders", 0).await;
    let response = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    assert_eq!(response.spiffe_id, ORDERS);
    let (uris, not_before, not_after) = verify(&response);
    assert_eq!(uris, [ORDERS]);
    // Backdated for clock skew, valid for the configured lifetime.
    let now = now_s();
    assert!(
        (now - 62..=now - 58).contains(&not_before),
        "{not_before} vs {now}"
    );
    let expected = now + ttl.as_secs() as i64;
    assert!((expected - 5..=expected + 1).contains(&not_after));
    assert_eq!(response.not_after_unix_ms / 1000, not_after);
    // A generated root signs leaves directly: the chain is the leaf alone.
    assert_eq!(ders(&response.cert_chain_pem).len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn certify_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let (token, id) = server.create_token("shop", "orders", 0).await;

    // Another identity, or the same names in another trust domain.
    for uri in [
        "spiffe://weir.local/ns/shop/sa/payments",
        "spiffe://other.domain/ns/shop/sa/orders",
    ] {
        let (code, message) = code(server.certify(&token, &csr(uri)).await);
        assert_eq!(code, Code::PermissionDenied, "{uri}: {message}");
        assert!(message.contains(uri), "{message}");
    }

    // Malformed CSRs.
    let key = KeyPair::generate().expect("key");
    let mut two = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    two.subject_alt_names = [ORDERS, "spiffe://weir.local/ns/shop/sa/payments"]
        .into_iter()
        .map(|u| rcgen::SanType::URI(u.try_into().expect("ia5")))
        .collect();
    let two = two
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let none = rcgen::CertificateParams::new(vec!["orders.shop".to_string()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    // A flipped bit in the signature: the caller does not prove it holds the key.
    let good = ca::csr_pem(ORDERS, &key).expect("csr");
    let mut der = ders_any(&good);
    let last = der.len() - 1;
    der[last] ^= 1;
    let forged_sig = pem_block("CERTIFICATE REQUEST", &der);
    for (what, pem, says) in [
        ("garbage", "not a csr".to_string(), "PEM"),
        ("a certificate", ders_to_cert_pem(&good), "CERTIFICATE"),
        ("two URI SANs", two, "found 2"),
        ("no URI SAN", none, "found 0"),
        ("bad signature", forged_sig, "signature does not verify"),
    ] {
        let (code, message) = code(server.certify(&token, &pem).await);
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(message.contains(says), "{what}: {message}");
    }

    // Tokens: tampered payload, tampered signature, nonsense, another server's.
    let (payload, tag) = token.split_once('.').expect("token has two parts");
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    claims["sa"] = "payments".into();
    let tampered = format!(
        "{}.{tag}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"))
    );
    let mut sig = URL_SAFE_NO_PAD.decode(tag).expect("b64");
    sig[0] ^= 1;
    let bad_sig = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig));
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = TestServer::start(other_dir.path()).await;
    let (foreign, _) = other.create_token("shop", "orders", 0).await;
    other.stop().await;
    for (what, bad) in [
        ("tampered payload", tampered.as_str()),
        ("tampered signature", bad_sig.as_str()),
        ("nonsense", "abc"),
        ("empty", ""),
        ("another control plane's", foreign.as_str()),
    ] {
        let (code, message) = code(server.certify(bad, &csr(ORDERS)).await);
        assert_eq!(code, Code::Unauthenticated, "{what}: {message}");
    }
    // Token refusals come first: a forged token learns nothing about its CSR.
    let (code_first, _) = code(server.certify(&tampered, "garbage").await);
    assert_eq!(code_first, Code::Unauthenticated);

    // Revoked.
    assert!(server.certify(&token, &csr(ORDERS)).await.is_ok());
    let mut admin = server.admin().await;
    admin
        .revoke_token(server.authed(RevokeTokenRequest { id: id.clone() }))
        .await
        .expect("revoke");
    let (code_revoked, message) = code(server.certify(&token, &csr(ORDERS)).await);
    assert_eq!(code_revoked, Code::Unauthenticated);
    assert!(message.contains("revoked"), "{message}");
    let listed = admin
        .list_tokens(server.authed(ListTokensRequest {}))
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert!(
        listed
            .iter()
            .any(|t| t.id == id && t.revoked && t.identity == ORDERS)
    );
    let missing = admin
        .revoke_token(server.authed(RevokeTokenRequest { id: "nope".into() }))
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound);

    // Token administration needs the admin token; Certify does not.
    let anonymous = admin
        .create_token(CreateTokenRequest {
            namespace: "shop".into(),
            service_account: "orders".into(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("no admin token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let invalid = admin
        .create_token(server.authed(CreateTokenRequest {
            namespace: "shop/x".into(),
            service_account: "orders".into(),
            ttl_seconds: 0,
        }))
        .await
        .expect_err("bad namespace");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    server.stop().await;
}

async fn expired_token_is_refused(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let request = server.authed(CreateTokenRequest {
        namespace: "shop".into(),
        service_account: "orders".into(),
        ttl_seconds: 1,
    });
    let response = server
        .admin()
        .await
        .create_token(request)
        .await
        .expect("create")
        .into_inner();
    let expires_ms = response.info.expect("info").expires_unix_ms;
    // Poll the clock rather than sleeping a fixed time: done as soon as the expiry passes.
    eventually_within("the token to expire", Duration::from_secs(5), || async {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (now_ms >= expires_ms).then_some(())
    })
    .await;
    let (code, message) = code(server.certify(&response.token, &csr(ORDERS)).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("expired"), "{message}");
    server.stop().await;
}

async fn ca_and_tokens_survive_a_restart(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let (token, _) = server.create_token("shop", "orders", 0).await;
    let first = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    server.stop().await;

    let server = TestServer::start_on(dir.path(), &store).await;
    let second = server
        .certify(&token, &csr(ORDERS))
        .await
        .expect("certify again");
    assert_eq!(first.trust_bundle_pem, second.trust_bundle_pem);
    // The old leaf still verifies against the bundle handed out after the restart.
    let mixed = CertifyResponse {
        trust_bundle_pem: second.trust_bundle_pem.clone(),
        ..first
    };
    verify(&mixed);
    server.stop().await;
    if store.is_some() {
        return;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(crate::STORE_FILE))
            .expect("store")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the store holds the CA key");
}

#[tokio::test]
async fn intermediate_from_files_is_sent_in_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root_pem = ca::generate_root("weir.local").expect("root");
    let root = Ca::from_pem(&root_pem.cert_pem, &root_pem.key_pem, None).expect("root CA");
    let intermediate = root
        .sign_intermediate("weir intermediate")
        .expect("intermediate");
    let files = CaFiles {
        cert: dir.path().join("ca.crt"),
        key: dir.path().join("ca.key"),
        trust_bundle: Some(dir.path().join("bundle.crt")),
    };
    std::fs::write(&files.cert, &intermediate.cert_pem).expect("write");
    std::fs::write(&files.key, &intermediate.key_pem).expect("write");
    std::fs::write(dir.path().join("bundle.crt"), &root_pem.cert_pem).expect("write");
    let server = TestServer::start_with(&dir.path().join("data"), |c| c.ca = Some(files)).await;
    let (token, _) = server.create_token("shop", "orders", 0).await;
    let response = server.certify(&token, &csr(ORDERS)).await.expect("certify");
    let chain = ders(&response.cert_chain_pem);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(chain[1], ders(&intermediate.cert_pem)[0]);
    assert_eq!(ders(&response.trust_bundle_pem), ders(&root_pem.cert_pem));
    let (uris, _, _) = verify(&response);
    assert_eq!(uris, [ORDERS]);
    server.stop().await;

    // Without --trust-bundle, and with the root appended to --ca-cert (cert-manager's
    // tls.crt), the root in the file becomes the bundle and stays out of the chain.
    let with_root = format!("{}{}", intermediate.cert_pem, root_pem.cert_pem);
    let ca = Ca::from_pem(&with_root, &intermediate.key_pem, None).expect("CA");
    assert_eq!(ders(ca.trust_bundle_pem()), ders(&root_pem.cert_pem));
    // The wrong key for the certificate is refused at start, not at the first Certify.
    let err = Ca::from_pem(&intermediate.cert_pem, &root_pem.key_pem, None).expect_err("mismatch");
    assert!(matches!(err, ca::CaError::KeyMismatch), "{err}");
}

// === PEM helpers for malformed inputs ===

fn ders_any(pem: &str) -> Vec<u8> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    block.contents
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

/// The CSR's bytes under a CERTIFICATE label: a PEM of the wrong kind.
fn ders_to_cert_pem(csr_pem: &str) -> String {
    pem_block("CERTIFICATE", &ders_any(csr_pem))
}

on_both_stores!(
    certify_issues_a_spiffe_leaf,
    expired_token_is_refused,
    ca_and_tokens_survive_a_restart
);
