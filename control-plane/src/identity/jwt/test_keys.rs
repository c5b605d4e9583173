//! Keys and tokens for tests: RSA keys made by the `openssl` CLI (ring cannot generate RSA
//! keys), P-256 keys by ring, tokens shaped like the API server's projected ones.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

use super::jwks::KeySet;

pub const ISS: &str = "https://kubernetes.default.svc.cluster.local";
pub const SUB: &str = "system:serviceaccount:shop:orders";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

pub struct TestKey {
    kid: String,
    signer: Signer,
}

/// PKCS#8 DER of two 2048-bit RSA keys, made once per test run (a few hundred ms each). PEM,
/// because openssl's DER output is PKCS#1.
fn rsa_pkcs8(i: usize) -> Vec<u8> {
    static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..2)
            .map(|_| {
                let out = std::process::Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                    .arg("rsa_keygen_bits:2048")
                    .output()
                    .expect("run openssl (the tests need the openssl CLI)");
                assert!(
                    out.status.success(),
                    "openssl genpkey: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                use rustls::pki_types::PrivatePkcs8KeyDer;
                use rustls::pki_types::pem::PemObject;
                PrivatePkcs8KeyDer::from_pem_slice(&out.stdout)
                    .expect("PKCS#8 PEM from openssl")
                    .secret_pkcs8_der()
                    .to_vec()
            })
            .collect()
    })[i]
        .clone()
}

impl TestKey {
    pub fn rsa(kid: &str) -> TestKey {
        Self::rsa_nth(kid, 0)
    }

    /// The other RSA key, e.g. to sign under a kid that belongs to the first.
    pub fn rsa_other(kid: &str) -> TestKey {
        Self::rsa_nth(kid, 1)
    }

    pub fn rsa_nth(kid: &str, i: usize) -> TestKey {
        let key = RsaKeyPair::from_pkcs8(&rsa_pkcs8(i)).expect("RSA PKCS#8 from openssl");
        TestKey {
            kid: kid.into(),
            signer: Signer::Rsa(key),
        }
    }

    pub fn ec(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256 PKCS#8");
        TestKey {
            kid: kid.into(),
            signer: Signer::Ec(key),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        }
    }

    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match &self.signer {
            Signer::Rsa(key) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                       "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        }
    }

    pub fn sign_raw(&self, header: &Value, claims: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(key) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("RSA sign");
                sig
            }
            Signer::Ec(key) => key
                .sign(&rng, input.as_bytes())
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(header, claims.to_string().as_bytes())
    }

    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"})
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// What the API server puts in a projected token for audience `weir`.
pub fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISS, "aud": ["weir"], "sub": SUB,
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders"}}
    })
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

pub fn set(keys: &[&TestKey]) -> KeySet {
    KeySet::parse(jwks(keys).as_bytes()).expect("JWKS").0
}
