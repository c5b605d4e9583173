//! Real TLS handshakes over an in-memory pipe, with certificates made by rcgen.
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// (chain PEM, key PEM) of a leaf for `spiffe_id` signed by `ca`.
fn leaf(ca: &Ca, spiffe_id: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("uri"))];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn creds(ca: &Ca, bundle: &Ca, id: &str) -> Credentials {
    let (chain, key) = leaf(ca, id);
    Credentials::from_pem(
        chain.as_bytes(),
        key.as_bytes(),
        bundle.cert.pem().as_bytes(),
    )
    .expect("credentials")
}

/// Runs a handshake; returns (what the server saw as the client id, what the client saw as the
/// server id, ALPN) or the error text.
async fn handshake(
    server: &Credentials,
    client: Arc<rustls::ClientConfig>,
) -> Result<(Option<String>, Option<String>, Option<Vec<u8>>), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server.clone());
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let peer = peer_id(s.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(&buf).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let connector = TlsConnector::from(client);
    let name = ServerName::try_from("weir-mesh").expect("name");
    let client_side = async {
        let mut c = connector
            .connect(name, b)
            .await
            .map_err(|e| e.to_string())?;
        let server_id = peer_id(c.get_ref().1.peer_certificates());
        let alpn = c.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((server_id, alpn))
    };
    let (server_id, alpn) = client_side.await?;
    let client_id = srv.await.map_err(|e| e.to_string())??;
    Ok((client_id, server_id, alpn))
}

#[tokio::test]
async fn mutual_tls_carries_both_identities_and_alpn() {
    let root = ca("root");
    let server = creds(&root, &root, "spiffe://weir.local/ns/shop/sa/payments");
    let client = creds(&root, &root, "spiffe://weir.local/ns/shop/sa/orders");
    assert_eq!(server.spiffe_id, "spiffe://weir.local/ns/shop/sa/payments");
    let (client_id, server_id, alpn) = handshake(&server, client.client_for(ALPN_H2))
        .await
        .expect("handshake");
    assert_eq!(
        client_id.as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/orders")
    );
    assert_eq!(
        server_id.as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/payments")
    );
    assert_eq!(alpn.as_deref(), Some(ALPN_H2));
}

#[tokio::test]
async fn a_peer_from_another_root_is_refused_both_ways() {
    let root = ca("root");
    let other = ca("other");
    let server = creds(&root, &root, "spiffe://weir.local/ns/shop/sa/payments");
    let stranger = creds(&other, &other, "spiffe://weir.local/ns/shop/sa/orders");
    assert!(
        handshake(&server, stranger.client_for(ALPN_H2))
            .await
            .is_err(),
        "client from another root"
    );
    let impostor = creds(&other, &root, "spiffe://weir.local/ns/shop/sa/payments");
    let client = creds(&root, &root, "spiffe://weir.local/ns/shop/sa/orders");
    // The impostor's server cert chains to `other`, which the client does not trust.
    assert!(
        handshake(&impostor, client.client_for(ALPN_H2))
            .await
            .is_err(),
        "server from another root"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let root = ca("root");
    let server = creds(&root, &root, "spiffe://weir.local/ns/shop/sa/payments");
    let mut roots = RootCertStore::empty();
    roots.add(root.cert.der().clone()).expect("root");
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::MeshServerVerifier::new(
            Arc::new(roots),
            provider(),
        )))
        .with_no_client_auth();
    assert!(handshake(&server, Arc::new(anonymous)).await.is_err());
}

#[test]
fn credentials_need_a_spiffe_id_and_roots() {
    let root = ca("root");
    let (chain, key) = leaf(&root, "https://not-spiffe.example");
    let err = Credentials::from_pem(chain.as_bytes(), key.as_bytes(), root.cert.pem().as_bytes())
        .expect_err("no id");
    assert!(matches!(err, TlsError::NoSpiffeId), "{err}");
    let (chain, key) = leaf(&root, "spiffe://weir.local/ns/a/sa/b");
    let err = Credentials::from_pem(chain.as_bytes(), key.as_bytes(), b"").expect_err("no roots");
    assert!(matches!(err, TlsError::NoRoots), "{err}");
}
