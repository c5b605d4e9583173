//! A service-account token issuer for tests: an ES256 key the test makes, its JWKS as the API
//! server publishes it at `/openid/v1/jwks`, and projected tokens in the shape the kubelet
//! mounts (`iss`, `sub: system:serviceaccount:NS:SA`, `aud`, `exp`, `iat`, `nbf`, and the
//! `kubernetes.io` claim).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

pub struct Issuer {
    pub issuer: String,
    kid: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Issuer {
    pub fn new(issuer: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("cannot load the P-256 key: {e}"))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            kid: format!("test-{}", crate::util::unique()),
            key,
            rng,
        })
    }

    /// The JWKS document (one EC P-256 key, uncompressed point split into x and y).
    pub fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        json!({ "keys": [{
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    }

    /// A projected token for `namespace`/`service_account` with `audience`, valid for
    /// `ttl_s` seconds from now.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
        ttl_s: u64,
    ) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header = json!({ "alg": "ES256", "kid": self.kid });
        let claims = json!({
            "aud": [audience],
            "exp": now + ttl_s,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": { "name": pod, "uid": format!("uid-{pod}") },
                "serviceaccount": { "name": service_account, "uid": format!("uid-{service_account}") },
            },
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
