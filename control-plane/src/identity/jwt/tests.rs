//! Tokens signed here with keys made here (see `test_keys`). The key sources are exercised
//! with a real file and a real HTTPS server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::jwks::{KeySet, ParseError};
use super::test_keys::*;
use super::*;

fn orders() -> ServiceAccount {
    ServiceAccount {
        namespace: "shop".into(),
        name: "orders".into(),
    }
}

fn verifier() -> Verifier {
    Verifier {
        issuer: ISS.into(),
        audience: "weir".into(),
    }
}

#[test]
fn rs256_and_es256_tokens_verify() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let keys = set(&[&rsa, &ec]);
    let v = verifier();
    assert_eq!(v.verify(&rsa.token(&claims()), &keys, now()), Ok(orders()));
    assert_eq!(v.verify(&ec.token(&claims()), &keys, now()), Ok(orders()));
    assert_eq!(
        orders().spiffe_id("weir.local"),
        "spiffe://weir.local/ns/shop/sa/orders"
    );
    // aud as a string, aud among others, a fractional exp.
    for claims in [
        with(claims(), "aud", json!("weir")),
        with(claims(), "aud", json!(["kube-apiserver", "weir"])),
        with(claims(), "exp", json!(now() as f64 + 30.5)),
        without(claims(), "nbf"),
    ] {
        assert_eq!(
            v.verify(&ec.token(&claims), &keys, now()),
            Ok(orders()),
            "{claims}"
        );
    }
    // Within the 60 s skew: just expired, or valid from a few seconds ahead.
    let t = now();
    let late = with(claims(), "exp", json!(t - 30));
    let early = with(claims(), "nbf", json!(t + 30));
    assert_eq!(v.verify(&rsa.token(&late), &keys, t), Ok(orders()));
    assert_eq!(v.verify(&rsa.token(&early), &keys, t), Ok(orders()));
    // A token with no kid, against a set of one key.
    let no_kid = rsa.sign(&json!({"alg": "RS256"}), &claims());
    assert_eq!(v.verify(&no_kid, &set(&[&rsa]), t), Ok(orders()));
}

#[test]
fn every_refusal_has_its_own_reason() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let keys = set(&[&rsa, &ec]);
    let v = verifier();
    let t = now();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","kid":"rsa-1"}"#),
        b64(&claims().to_string())
    );
    let flipped = {
        let token = ec.token(&claims());
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
        sig[10] ^= 1;
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    // Claims swapped for another identity under the original signature.
    let swapped = {
        let token = rsa.token(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let other = with(
            claims(),
            "sub",
            json!("system:serviceaccount:shop:payments"),
        );
        format!("{}.{}.{}", parts[0], b64(&other.to_string()), parts[2])
    };
    let sub = |s: &str| rsa.token(&with(claims(), "sub", json!(s)));
    let cases: Vec<(&str, String, JwtError)> = vec![
        ("alg none", unsigned, JwtError::Unsigned),
        (
            "HS256",
            rsa.sign(&json!({"alg": "HS256", "kid": "rsa-1"}), &claims()),
            JwtError::UnsupportedAlg("HS256".into()),
        ),
        (
            "ES256 header on the RSA key",
            rsa.sign(&json!({"alg": "ES256", "kid": "rsa-1"}), &claims()),
            JwtError::AlgKeyMismatch {
                alg: "ES256".into(),
                kid: "rsa-1".into(),
                key: "the key is for RS256".into(),
            },
        ),
        (
            "unknown kid",
            TestKey::rsa("rsa-9").token(&claims()),
            JwtError::UnknownKid("rsa-9".into()),
        ),
        (
            "no kid, two keys",
            rsa.sign(&json!({"alg": "RS256"}), &claims()),
            JwtError::MissingKid(2),
        ),
        (
            "another RSA key under our kid",
            TestKey::rsa_other("rsa-1").token(&claims()),
            JwtError::BadSignature {
                kid: "rsa-1".into(),
            },
        ),
        (
            "flipped ES256 signature byte",
            flipped,
            JwtError::BadSignature { kid: "ec-1".into() },
        ),
        (
            "claims swapped",
            swapped,
            JwtError::BadSignature {
                kid: "rsa-1".into(),
            },
        ),
        (
            "other issuer",
            rsa.token(&with(claims(), "iss", json!("https://other.example"))),
            JwtError::WrongIssuer {
                got: "https://other.example".into(),
                want: ISS.into(),
            },
        ),
        (
            "wrong audience",
            rsa.token(&with(claims(), "aud", json!(["kube-apiserver"]))),
            JwtError::WrongAudience {
                got: vec!["kube-apiserver".into()],
                want: "weir".into(),
            },
        ),
        (
            "wrong audience (string)",
            ec.token(&with(claims(), "aud", json!("vault"))),
            JwtError::WrongAudience {
                got: vec!["vault".into()],
                want: "weir".into(),
            },
        ),
        (
            "expired beyond the skew",
            rsa.token(&with(claims(), "exp", json!(t - 61))),
            JwtError::Expired {
                exp: t - 61,
                now: t,
            },
        ),
        (
            "not yet valid beyond the skew",
            rsa.token(&with(claims(), "nbf", json!(t + 61))),
            JwtError::NotYetValid {
                nbf: t + 61,
                now: t,
            },
        ),
        (
            "no exp",
            rsa.token(&without(claims(), "exp")),
            JwtError::MissingClaim("exp"),
        ),
        (
            "no aud",
            rsa.token(&without(claims(), "aud")),
            JwtError::MissingClaim("aud"),
        ),
        (
            "a user, not a service account",
            sub("alice@example.com"),
            JwtError::NotServiceAccount("alice@example.com".into()),
        ),
        (
            "a node",
            sub("system:node:worker-1"),
            JwtError::NotServiceAccount("system:node:worker-1".into()),
        ),
        (
            "only a namespace",
            sub("system:serviceaccount:shop"),
            JwtError::InvalidSubject {
                sub: "system:serviceaccount:shop".into(),
                reason: "no ':' between namespace and name".into(),
            },
        ),
        (
            "extra segment",
            sub("system:serviceaccount:shop:orders:x"),
            JwtError::InvalidSubject {
                sub: "system:serviceaccount:shop:orders:x".into(),
                reason: "more than namespace and name after the prefix".into(),
            },
        ),
        (
            "two segments",
            "a.b".into(),
            JwtError::Malformed("not three dot-separated parts"),
        ),
        (
            "header not base64url",
            "!!.e30.e30".into(),
            JwtError::Malformed("header is not base64url"),
        ),
        (
            "crit header",
            rsa.sign(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
                &claims(),
            ),
            JwtError::Malformed(
                "header lists critical extensions (crit) this verifier does not know",
            ),
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token, &keys, t), Err(want), "{name}");
    }
    // Path-changing segments: refused with the segment rule's reason.
    for bad in [
        "system:serviceaccount:..:orders",
        "system:serviceaccount:shop:a/b",
        "system:serviceaccount::orders",
    ] {
        match v.verify(&sub(bad), &keys, t) {
            Err(JwtError::InvalidSubject { sub, reason }) => {
                assert_eq!(sub, bad);
                assert!(
                    reason.contains("namespace") || reason.contains("service account"),
                    "{reason}"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn claims_are_read_only_after_the_signature_verifies() {
    let rsa = TestKey::rsa("rsa-1");
    let keys = set(&[&rsa]);
    let garbage = b"{not json";
    // Signed by someone else: the signature is what is reported, not the unparsable claims.
    let forged = TestKey::rsa_other("rsa-1").sign_raw(&rsa.header(), garbage);
    assert_eq!(
        verifier().verify(&forged, &keys, now()),
        Err(JwtError::BadSignature {
            kid: "rsa-1".into()
        })
    );
    let signed = rsa.sign_raw(&rsa.header(), garbage);
    assert_eq!(
        verifier().verify(&signed, &keys, now()),
        Err(JwtError::Malformed(
            "claims are not the expected JSON object"
        ))
    );
    // A wrong iss is only reported for a token whose signature holds.
    let other_iss = with(claims(), "iss", json!("https://evil.example"));
    let forged = TestKey::rsa_other("rsa-1").token(&other_iss);
    assert!(matches!(
        verifier().verify(&forged, &keys, now()),
        Err(JwtError::BadSignature { .. })
    ));
}

#[test]
fn jwks_keeps_usable_keys_and_says_why_others_are_skipped() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let mut padded = ec.jwk();
    padded["x"] = json!(format!("{}=", padded["x"].as_str().expect("x")));
    let mut leading_zero = rsa.jwk();
    let n = URL_SAFE_NO_PAD
        .decode(leading_zero["n"].as_str().expect("n"))
        .expect("b64");
    leading_zero["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
    leading_zero["kid"] = json!("rsa-0");
    let json = json!({"keys": [
        rsa.jwk(), padded, leading_zero,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa.jwk()["n"], "e": "AQAB"},
        {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kid": "no-kty"},
    ]})
    .to_string();
    let (keys, skipped) = KeySet::parse(json.as_bytes()).expect("usable keys");
    assert_eq!(keys.kids(), ["rsa-1", "ec-1", "rsa-0"]);
    let skipped = skipped.join("\n");
    for reason in [
        r#"kid "hmac"): kty "oct" is not RSA or EC"#,
        r#"kid "p384"): curve Some("P-384") is not P-256"#,
        r#"kid "small"): RSA modulus of 1024 bits; 2048 to 8192 are accepted"#,
        r#"kid "enc"): use "enc" is not "sig""#,
        r#"kid "short"): P-256 coordinates must be 32 bytes"#,
        r#"kid "no-kty"): missing field `kty`"#,
    ] {
        assert!(skipped.contains(reason), "{reason} not in:\n{skipped}");
    }
    // The padded EC key and the zero-prefixed modulus still verify.
    let v = verifier();
    assert_eq!(v.verify(&ec.token(&claims()), &keys, now()), Ok(orders()));
    let zero = TestKey::rsa("rsa-0");
    assert_eq!(v.verify(&zero.token(&claims()), &keys, now()), Ok(orders()));

    assert!(matches!(
        KeySet::parse(br#"{"keys": [{"kty": "oct", "kid": "h"}]}"#),
        Err(ParseError::NoUsableKeys(reasons)) if reasons.len() == 1
    ));
    assert_eq!(
        KeySet::parse(br#"{"keys": []}"#).map(|_| ()),
        Err(ParseError::NoUsableKeys(vec![]))
    );
    assert!(matches!(
        KeySet::parse(b"<html>"),
        Err(ParseError::NotJson(_))
    ));
}

#[test]
fn jwks_locations() {
    assert_eq!(
        JwksLocation::parse("/etc/weir/jwks.json"),
        Ok(JwksLocation::File("/etc/weir/jwks.json".into()))
    );
    assert!(matches!(
        JwksLocation::parse("https://kubernetes.default.svc/openid/v1/jwks"),
        Ok(JwksLocation::Url(u)) if u.path() == "/openid/v1/jwks"
    ));
    for bad in [
        "http://kubernetes.default.svc/openid/v1/jwks",
        "",
        "ftp://x/y",
    ] {
        assert!(JwksLocation::parse(bad).is_err(), "{bad:?}");
    }
}

fn config(jwks: JwksLocation, sa_dir: &std::path::Path) -> KubernetesConfig {
    KubernetesConfig {
        service_account_dir: sa_dir.to_owned(),
        ..KubernetesConfig::new(ISS, jwks)
    }
}

#[tokio::test]
async fn a_jwks_file_is_reread_when_it_changes_and_must_load_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    let (old, new) = (TestKey::ec("old"), TestKey::rsa("new"));
    let missing = KubernetesTokens::open(&config(JwksLocation::File(path.clone()), dir.path()))
        .await
        .expect_err("no file yet");
    assert!(
        missing.to_string().contains("cannot read the JWKS file"),
        "{missing}"
    );
    std::fs::write(&path, "{}").expect("write");
    let bad = KubernetesTokens::open(&config(JwksLocation::File(path.clone()), dir.path()))
        .await
        .expect_err("not a key set");
    assert!(bad.to_string().contains("not a JSON key set"), "{bad}");

    std::fs::write(&path, jwks(&[&old])).expect("write");
    let tokens = KubernetesTokens::open(&config(JwksLocation::File(path.clone()), dir.path()))
        .await
        .expect("open");
    assert_eq!(tokens.verify(&old.token(&claims())).await, Ok(orders()));
    assert_eq!(
        tokens.verify(&new.token(&claims())).await,
        Err(JwtError::UnknownKid("new".into()))
    );
    // Rotation: the new key is added, then the old one retired.
    let tmp = dir.path().join("jwks.tmp");
    std::fs::write(&tmp, jwks(&[&old, &new])).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert_eq!(tokens.verify(&new.token(&claims())).await, Ok(orders()));
    std::fs::write(&tmp, jwks(&[&new])).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert_eq!(
        tokens.verify(&old.token(&claims())).await,
        Err(JwtError::UnknownKid("old".into()))
    );
    // A broken file keeps the keys there were.
    std::fs::write(&path, "garbage").expect("write");
    assert_eq!(tokens.verify(&new.token(&claims())).await, Ok(orders()));
}

/// An HTTPS server like the API server's `/openid/v1/jwks`: requires the bearer token,
/// counts requests, serves whatever `body` holds.
struct JwksServer {
    url: String,
    requests: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Writes the CA and `token` into `sa_dir` as the kubelet would.
    async fn start(sa_dir: &std::path::Path, body: String) -> JwksServer {
        use http_body_util::Full;
        use hyper::body::Bytes;
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair as RcKey};
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = RcKey::generate().expect("key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = RcKey::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        std::fs::write(sa_dir.join("ca.crt"), ca_pem).expect("write ca.crt");
        std::fs::write(sa_dir.join("token"), "pod-sa-token\n").expect("write token");
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body));
        let (count, served) = (requests.clone(), body.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let (count, served) = (count.clone(), served.clone());
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let authorized = req
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .is_some_and(|v| v == "Bearer pod-sa-token");
                    let (status, text) = match (authorized, req.uri().path()) {
                        (false, _) => (401, "Unauthorized".to_string()),
                        (true, "/openid/v1/jwks") => (200, served.lock().expect("body").clone()),
                        (true, _) => (404, "not found".to_string()),
                    };
                    let rsp = hyper::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(text)));
                    async move { rsp }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        JwksServer {
            url: format!("https://localhost:{port}"),
            requests,
            body,
            task,
        }
    }

    fn location(&self, path: &str) -> JwksLocation {
        JwksLocation::parse(&format!("{}{path}", self.url)).expect("URL")
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_with_the_pod_credentials_and_refreshed_on_an_unknown_kid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second, third) = (TestKey::ec("k1"), TestKey::rsa("k2"), TestKey::ec("k3"));
    let server = JwksServer::start(dir.path(), jwks(&[&first])).await;
    let tokens = KubernetesTokens::open(&config(server.location("/openid/v1/jwks"), dir.path()))
        .await
        .expect("open");
    assert_eq!(server.requests(), 1, "keys are loaded at start");
    assert_eq!(tokens.verify(&first.token(&claims())).await, Ok(orders()));
    assert_eq!(server.requests(), 1, "a known kid needs no fetch");

    // The issuer rotates in k2: the first token naming it makes one fetch.
    *server.body.lock().expect("body") = jwks(&[&first, &second]);
    assert_eq!(tokens.verify(&second.token(&claims())).await, Ok(orders()));
    assert_eq!(server.requests(), 2);
    // Another unknown kid right after: no fetch (rate limited), refused.
    *server.body.lock().expect("body") = jwks(&[&first, &second, &third]);
    assert_eq!(
        tokens.verify(&third.token(&claims())).await,
        Err(JwtError::UnknownKid("k3".into()))
    );
    assert_eq!(
        server.requests(),
        2,
        "at most one on-demand fetch per interval"
    );
}

#[tokio::test]
async fn a_jwks_url_that_fails_at_start_is_retried_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = TestKey::ec("k1");
    let server = JwksServer::start(dir.path(), jwks(&[&key])).await;
    // Wrong bearer: the start goes on, and a token is refused naming the cause.
    std::fs::write(dir.path().join("token"), "someone-else").expect("write");
    let tokens = KubernetesTokens::open(&config(server.location("/openid/v1/jwks"), dir.path()))
        .await
        .expect("a URL failing at start is not fatal");
    match tokens.verify(&key.token(&claims())).await {
        Err(JwtError::KeysUnavailable(why)) => {
            assert!(why.contains("401"), "{why}");
            assert!(why.contains("/openid/v1/jwks"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The refresher's retry loads them once the credentials are right.
    std::fs::write(dir.path().join("token"), "pod-sa-token").expect("write");
    let refresher = tokio::spawn(tokens.keys().clone().run());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokens.keys().current().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keys not loaded by the retry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    refresher.abort();
    assert_eq!(tokens.verify(&key.token(&claims())).await, Ok(orders()));

    // No CA file: a clear reason.
    std::fs::remove_file(dir.path().join("ca.crt")).expect("rm");
    let tokens = KubernetesTokens::open(&config(server.location("/openid/v1/jwks"), dir.path()))
        .await
        .expect("open");
    let why = tokens.keys().last_error().await;
    assert!(why.contains("cannot read the cluster CA"), "{why}");
}
