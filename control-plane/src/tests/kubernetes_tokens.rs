//! Certify with a Kubernetes service-account token against a real server whose
//! `--kubernetes-jwks` is a file: the certificate is for exactly the token's service account.

use tonic::Code;

use super::*;
use crate::ca;
use crate::identity::jwt::test_keys::{ISS, TestKey, claims, jwks, with};
use crate::identity::jwt::{JwksLocation, KubernetesConfig};

const ORDERS: &str = "spiffe://weir.local/ns/shop/sa/orders";

fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    ca::csr_pem(uri, &key).expect("csr")
}

async fn certify(server: &TestServer, token: &str, csr_pem: &str) -> Result<String, tonic::Status> {
    use weir_proto::identity::v1::CertifyRequest;
    use weir_proto::identity::v1::identity_client::IdentityClient;
    let mut client = IdentityClient::new(channel(&server.url).await);
    client
        .certify(CertifyRequest {
            token: token.into(),
            csr_pem: csr_pem.into(),
        })
        .await
        .map(|r| r.into_inner().spiffe_id)
}

fn refused(result: Result<String, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn a_service_account_token_certifies_exactly_its_service_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&rsa, &ec])).expect("write");
    let k8s = KubernetesConfig::new(ISS, JwksLocation::File(jwks_path));
    let server = TestServer::start_with(&dir.path().join("data"), |c| {
        c.kubernetes_tokens = Some(k8s)
    })
    .await;

    for key in [&rsa, &ec] {
        let id = certify(&server, &key.token(&claims()), &csr(ORDERS)).await;
        assert_eq!(id.as_deref().map_err(|s| s.message()), Ok(ORDERS));
    }
    // The token proves shop/orders; a CSR for anything else is refused.
    let token = rsa.token(&claims());
    let (code, message) = refused(
        certify(
            &server,
            &token,
            &csr("spiffe://weir.local/ns/shop/sa/payments"),
        )
        .await,
    );
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(
        message.contains("service-account token of shop/orders"),
        "{message}"
    );
    // Refusals name their reason; a bad token is refused before its CSR is looked at.
    let wrong_aud = ec.token(&with(claims(), "aud", serde_json::json!(["vault"])));
    let (code, message) = refused(certify(&server, &wrong_aud, "garbage").await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("audience [\"vault\"]"), "{message}");
    let forged = TestKey::rsa_other("rsa-1").token(&claims());
    let (code, message) = refused(certify(&server, &forged, &csr(ORDERS)).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("signature does not verify"), "{message}");

    // Workload tokens keep working next to service-account tokens.
    let (hmac, _) = server_token(&server, "shop", "orders").await;
    assert_eq!(
        certify(&server, &hmac, &csr(ORDERS)).await.ok().as_deref(),
        Some(ORDERS)
    );
    server.stop().await;
}

async fn server_token(server: &TestServer, ns: &str, sa: &str) -> (String, String) {
    use weir_proto::admin::v1::CreateTokenRequest;
    let response = server
        .admin()
        .await
        .create_token(server.authed(CreateTokenRequest {
            namespace: ns.into(),
            service_account: sa.into(),
            ttl_seconds: 0,
        }))
        .await
        .expect("create token")
        .into_inner();
    let id = response.info.map(|i| i.id).unwrap_or_default();
    (response.token, id)
}

#[tokio::test]
async fn without_an_issuer_a_service_account_token_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let token = TestKey::ec("ec-1").token(&claims());
    let (code, message) = refused(certify(&server, &token, &csr(ORDERS)).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        message.contains("does not accept Kubernetes service-account tokens"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_jwks_file_that_cannot_load_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        kubernetes_tokens: Some(KubernetesConfig::new(ISS, JwksLocation::File(missing))),
        ..ServerConfig::new(dir.path().join("data"))
    };
    let err = crate::bind(config).await.err().expect("bind fails");
    let text = err.to_string();
    assert!(
        text.starts_with("--kubernetes-jwks: cannot read the JWKS file")
            && text.contains("nope.json"),
        "{text}"
    );
}
