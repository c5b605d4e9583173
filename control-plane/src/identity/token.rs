//! Workload tokens: the credential a proxy presents to `Identity.Certify`, scoped to one SPIFFE
//! identity.
//!
//! Format: `base64url(payload JSON) "." base64url(HMAC-SHA256(key, first part))`, no padding.
//! The payload is `{"id", "ns", "sa", "td", "exp"}` (exp in Unix seconds). An HMAC rather than a
//! signature because only the control plane ever checks a token; the 32-byte key lives in the
//! store. The signature makes a token unforgeable; revocation (the `id` looked up in the store)
//! is checked by the caller, since it needs the store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Length of the HMAC key kept in the store.
pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: String,
    pub ns: String,
    pub sa: String,
    pub td: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims {
    pub fn identity(&self) -> String {
        spiffe_id(&self.td, &self.ns, &self.sa)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed workload token ({0}); use the token printed by `weirctl token create`")]
    Malformed(&'static str),
    #[error(
        "workload token signature does not verify: forged, altered, or made by another control plane"
    )]
    BadSignature,
    #[error(
        "workload token {id} expired at Unix time {exp}; make a new one with `weirctl token create`"
    )]
    Expired { id: String, exp: u64 },
}

/// Mints and checks tokens with the control plane's HMAC key.
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn mint(&self, claims: &Claims) -> Result<String, serde_json::Error> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let tag = hmac::sign(&self.0, payload.as_bytes());
        Ok(format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// Checks the signature first (constant time, in ring) and only then reads the payload, so
    /// nothing an attacker wrote is parsed before it is known to be ours. Then the expiry
    /// against `now_unix_s`.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, TokenError> {
        let (payload, tag) = token
            .trim()
            .split_once('.')
            .ok_or(TokenError::Malformed("no '.' separator"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.0, payload.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("payload is not the expected JSON"))?;
        if now_unix_s >= claims.exp {
            return Err(TokenError::Expired {
                id: claims.id,
                exp: claims.exp,
            });
        }
        Ok(claims)
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` (design §3).
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A namespace or service account must be one SPIFFE path segment: letters, digits, `.`, `-`,
/// `_`, not `.` or `..` (which would change the path's meaning).
pub fn check_segment(what: &str, value: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if value.is_empty() {
        return Err(format!("{what} is required"));
    }
    if value.len() > 253 || value == "." || value == ".." || !value.chars().all(ok_char) {
        return Err(format!(
            "{what} {value:?} is not a valid SPIFFE path segment: use letters, digits, '.', '-' \
             and '_' (at most 253), as Kubernetes names do"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            id: "abc".into(),
            ns: "shop".into(),
            sa: "orders".into(),
            td: "weir.local".into(),
            exp,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = TokenKey::new(&[7; KEY_LEN]);
        let token = key.mint(&claims(100)).expect("mint");
        assert_eq!(key.verify(&token, 99), Ok(claims(100)));
        assert_eq!(
            key.verify(&token, 100),
            Err(TokenError::Expired {
                id: "abc".into(),
                exp: 100
            })
        );
        assert_eq!(
            claims(1).identity(),
            "spiffe://weir.local/ns/shop/sa/orders"
        );
    }

    #[test]
    fn forgeries_are_refused() {
        let key = TokenKey::new(&[7; KEY_LEN]);
        let token = key.mint(&claims(100)).expect("mint");
        let (payload, tag) = token.split_once('.').expect("two parts");
        // Another identity under the original signature.
        let mut other = claims(100);
        other.sa = "payments".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).expect("json"));
        assert_eq!(
            key.verify(&format!("{forged_payload}.{tag}"), 0),
            Err(TokenError::BadSignature)
        );
        // A flipped signature byte.
        let mut raw = URL_SAFE_NO_PAD.decode(tag).expect("b64");
        raw[0] ^= 1;
        let bad_tag = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            key.verify(&format!("{payload}.{bad_tag}"), 0),
            Err(TokenError::BadSignature)
        );
        // Another control plane's key.
        let other_key = TokenKey::new(&[8; KEY_LEN]);
        assert_eq!(other_key.verify(&token, 0), Err(TokenError::BadSignature));
        assert!(matches!(
            key.verify("garbage", 0),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            key.verify("a.!!", 0),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn segments() {
        assert!(check_segment("namespace", "shop").is_ok());
        assert!(check_segment("namespace", "my-ns_1.x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(check_segment("namespace", bad).is_err(), "{bad:?}");
        }
    }
}
