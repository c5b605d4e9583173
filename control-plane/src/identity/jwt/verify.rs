//! Verifying a Kubernetes service-account token (a JWS in compact form, RFC 7515/7519) against
//! the issuer's keys: signature first, then issuer, audience, validity times and subject.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::jwks::{KeySet, Lookup, PublicKey};
use crate::identity::token::{check_segment, spiffe_id};

/// Clocks of the API server and the control plane may disagree by this much.
pub const CLOCK_SKEW_S: u64 = 60;
const SUBJECT_PREFIX: &str = "system:serviceaccount:";

/// The identity a verified token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        spiffe_id(trust_domain, &self.namespace, &self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed service-account token ({0})")]
    Malformed(&'static str),
    #[error("service-account token is unsigned (alg \"none\")")]
    Unsigned,
    #[error("service-account token alg {0:?} is not supported; RS256 and ES256 are")]
    UnsupportedAlg(String),
    #[error(
        "service-account token names no key (kid) and the issuer's key set holds {0}; \
         cannot tell which one signed it"
    )]
    MissingKid(usize),
    #[error(
        "service-account token is signed with key {0:?}, which is not among the issuer's keys \
         (--kubernetes-jwks): a token from another cluster, or keys not yet reloaded"
    )]
    UnknownKid(String),
    #[error("service-account token alg {alg} does not fit key {kid:?} ({key})")]
    AlgKeyMismatch {
        alg: String,
        kid: String,
        key: String,
    },
    #[error(
        "service-account token signature does not verify with key {kid:?}: forged, altered, or \
         signed by another cluster"
    )]
    BadSignature { kid: String },
    #[error("service-account token has no {0:?} claim")]
    MissingClaim(&'static str),
    #[error(
        "service-account token issuer is {got:?}, but this control plane trusts {want:?} \
         (--kubernetes-issuer)"
    )]
    WrongIssuer { got: String, want: String },
    #[error(
        "service-account token audience {got:?} does not include {want:?}: mount a projected \
         token with audience {want:?} (--kubernetes-audience)"
    )]
    WrongAudience { got: Vec<String>, want: String },
    #[error("service-account token expired at Unix time {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("service-account token is not valid before Unix time {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("service-account token subject {0:?} is not system:serviceaccount:NAMESPACE:NAME")]
    NotServiceAccount(String),
    #[error("service-account token subject {sub:?}: {reason}")]
    InvalidSubject { sub: String, reason: String },
    #[error("the issuer's keys are not loaded yet ({0})")]
    KeysUnavailable(String),
}

/// What a token must say, besides carrying a valid signature.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub issuer: String,
    pub audience: String,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    sub: Option<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
}

/// A compact JWS has three dot-separated parts; a Weir workload token has two.
pub fn looks_like_jwt(token: &str) -> bool {
    token.trim().split('.').count() == 3
}

impl Verifier {
    /// The service account `token` proves at `now_unix_s`. Only the header is read before the
    /// signature verifies (it names the key); the claims are parsed after.
    pub fn verify(
        &self,
        token: &str,
        keys: &KeySet,
        now_unix_s: u64,
    ) -> Result<ServiceAccount, JwtError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let header: Header =
            serde_json::from_slice(&decode(header_b64, "header is not base64url")?)
                .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed(
                "header lists critical extensions (crit) this verifier does not know",
            ));
        }
        let alg = header.alg.ok_or(JwtError::Malformed("header has no alg"))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::Unsigned);
        }
        if alg != "RS256" && alg != "ES256" {
            return Err(JwtError::UnsupportedAlg(alg));
        }
        let key = keys.find(header.kid.as_deref()).map_err(|l| match l {
            Lookup::UnknownKid(kid) => JwtError::UnknownKid(kid),
            Lookup::Ambiguous(n) => JwtError::MissingKid(n),
        })?;
        let kid = key.kid.clone().unwrap_or_default();
        let mismatch = |why: String| JwtError::AlgKeyMismatch {
            alg: alg.clone(),
            kid: kid.clone(),
            key: why,
        };
        if let Some(key_alg) = key.alg.as_deref().filter(|a| *a != alg) {
            return Err(mismatch(format!("the key is for {key_alg}")));
        }
        let sig = decode(sig_b64, "signature is not base64url")?;
        // The signing input is the encoded header and claims exactly as sent.
        let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        let verified = match (&key.key, alg.as_str()) {
            (PublicKey::Rsa { n, e }, "RS256") => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                .is_ok(),
            (PublicKey::P256 { point }, "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, &sig)
                    .is_ok()
            }
            (other, _) => return Err(mismatch(format!("an {} key", other.kind()))),
        };
        if !verified {
            return Err(JwtError::BadSignature { kid });
        }

        let claims: Claims =
            serde_json::from_slice(&decode(claims_b64, "claims are not base64url")?)
                .map_err(|_| JwtError::Malformed("claims are not the expected JSON object"))?;
        let iss = claims.iss.ok_or(JwtError::MissingClaim("iss"))?;
        if iss != self.issuer {
            return Err(JwtError::WrongIssuer {
                got: iss,
                want: self.issuer.clone(),
            });
        }
        let aud = match claims.aud.ok_or(JwtError::MissingClaim("aud"))? {
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        };
        if !aud.contains(&self.audience) {
            return Err(JwtError::WrongAudience {
                got: aud,
                want: self.audience.clone(),
            });
        }
        let exp = numeric_date(
            claims.exp.ok_or(JwtError::MissingClaim("exp"))?,
            "exp is not a non-negative number",
        )?;
        if now_unix_s >= exp.saturating_add(CLOCK_SKEW_S) {
            return Err(JwtError::Expired {
                exp,
                now: now_unix_s,
            });
        }
        if let Some(nbf) = claims.nbf {
            let nbf = numeric_date(nbf, "nbf is not a non-negative number")?;
            if nbf > now_unix_s.saturating_add(CLOCK_SKEW_S) {
                return Err(JwtError::NotYetValid {
                    nbf,
                    now: now_unix_s,
                });
            }
        }
        subject(&claims.sub.ok_or(JwtError::MissingClaim("sub"))?)
    }
}

fn decode(part: &str, malformed: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(malformed))
}

/// RFC 7519 NumericDate: seconds, possibly fractional.
fn numeric_date(n: serde_json::Number, malformed: &'static str) -> Result<u64, JwtError> {
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // Truncation is the intent: validity is checked to the second.
                .map(|f| f as u64)
        })
        .ok_or(JwtError::Malformed(malformed))
}

/// `system:serviceaccount:NS:SA`, each part one SPIFFE path segment.
fn subject(sub: &str) -> Result<ServiceAccount, JwtError> {
    let rest = sub
        .strip_prefix(SUBJECT_PREFIX)
        .ok_or_else(|| JwtError::NotServiceAccount(sub.to_owned()))?;
    let invalid = |reason: String| JwtError::InvalidSubject {
        sub: sub.to_owned(),
        reason,
    };
    let (namespace, name) = rest
        .split_once(':')
        .ok_or_else(|| invalid("no ':' between namespace and name".into()))?;
    if name.contains(':') {
        return Err(invalid(
            "more than namespace and name after the prefix".into(),
        ));
    }
    check_segment("namespace", namespace).map_err(invalid)?;
    check_segment("service account", name).map_err(invalid)?;
    Ok(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}
