//! JSON Web Key Sets (RFC 7517) as a Kubernetes API server serves them at `/openid/v1/jwks`:
//! RSA keys (`n`, `e`) and P-256 keys (`x`, `y`), each named by its `kid`.
//!
//! A set may hold keys this verifier cannot use (another curve, an encryption key); those are
//! skipped with a reason rather than failing the whole set, so one odd key in a provider's set
//! does not lock every workload out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// ring's RSA verification takes 2048 to 8192-bit moduli; smaller keys are refused at load time
/// so a weak key shows up as a skipped key, not as "bad signature" later.
const RSA_MIN_BYTES: usize = 2048 / 8;
const RSA_MAX_BYTES: usize = 8192 / 8;
const P256_COORD_BYTES: usize = 32;

/// A public key in a form ring verifies with directly.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `0x04 || x || y`.
    P256 { point: Vec<u8> },
}

impl PublicKey {
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::P256 { .. } => "EC P-256",
        }
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            PublicKey::P256 { .. } => f.write_str("P256"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one: a token must then use exactly that.
    pub alg: Option<String>,
    pub key: PublicKey,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a JSON key set ({0})")]
    NotJson(String),
    #[error("no usable key ({})", if .0.is_empty() { "the set is empty".to_string() } else { .0.join("; ") })]
    NoUsableKeys(Vec<String>),
}

/// A key the token's header asked for that the set cannot supply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    UnknownKid(String),
    /// No `kid` in the token and more than one key to choose from.
    Ambiguous(usize),
}

#[derive(Deserialize)]
struct RawSet {
    // Values, not typed keys: one key of an unknown shape must not fail the others.
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl KeySet {
    /// The usable keys of `json`, and why each other key was skipped.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), ParseError> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in raw.keys.into_iter().enumerate() {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let name = match &kid {
                Some(kid) => format!("key {i} (kid {kid:?})"),
                None => format!("key {i}"),
            };
            match serde_json::from_value::<RawKey>(value)
                .map_err(|e| e.to_string())
                .and_then(parse_key)
            {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("{name}: {reason}")),
            }
        }
        if keys.is_empty() {
            return Err(ParseError::NoUsableKeys(skipped));
        }
        Ok((KeySet { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(none)"))
            .collect()
    }

    /// The key named `kid`; without a `kid`, the only key of the set.
    pub fn find(&self, kid: Option<&str>) -> Result<&Key, Lookup> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| Lookup::UnknownKid(kid.to_owned())),
            None => match self.keys.as_slice() {
                [only] => Ok(only),
                keys => Err(Lookup::Ambiguous(keys.len())),
            },
        }
    }
}

fn parse_key(raw: RawKey) -> Result<Key, String> {
    if let Some(u) = raw.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!("use {u:?} is not \"sig\""));
    }
    let key = match raw.kty.as_str() {
        "RSA" => {
            let n = strip_zeros(field("n", raw.n.as_deref())?);
            let e = strip_zeros(field("e", raw.e.as_deref())?);
            if !(RSA_MIN_BYTES..=RSA_MAX_BYTES).contains(&n.len()) {
                return Err(format!(
                    "RSA modulus of {} bits; 2048 to 8192 are accepted",
                    n.len() * 8
                ));
            }
            if e.is_empty() {
                return Err("RSA exponent is zero".into());
            }
            PublicKey::Rsa { n, e }
        }
        "EC" => {
            match raw.crv.as_deref() {
                Some("P-256") => {}
                other => return Err(format!("curve {other:?} is not P-256")),
            }
            let x = field("x", raw.x.as_deref())?;
            let y = field("y", raw.y.as_deref())?;
            if x.len() != P256_COORD_BYTES || y.len() != P256_COORD_BYTES {
                return Err(format!(
                    "P-256 coordinates must be {P256_COORD_BYTES} bytes (x {}, y {})",
                    x.len(),
                    y.len()
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * P256_COORD_BYTES);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::P256 { point }
        }
        other => return Err(format!("kty {other:?} is not RSA or EC")),
    };
    Ok(Key {
        kid: raw.kid,
        alg: raw.alg,
        key,
    })
}

fn field(name: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("no {name:?}"))?;
    // RFC 7518 says unpadded, but some producers pad; the padding carries nothing.
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("{name:?} is not base64url ({e})"))
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}
