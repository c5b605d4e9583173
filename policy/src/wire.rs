//! Serde plumbing: the `apiVersion`/`kind`/`metadata`/`spec` envelope shared by every kind, and
//! socket addresses written as strings. Knows no kind: each one plugs in with [`impl_kind!`]
//! in `model`, so imports go one way (model → wire → meta).

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::{API_VERSION, Metadata};

/// The on-the-wire envelope shared by all kinds, so the envelope rules live in one place.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Wire<S> {
    api_version: String,
    kind: String,
    metadata: Metadata,
    // Optional so MeshConfig can be written without a spec; other kinds reject its absence.
    spec: Option<S>,
}

/// A document kind as the envelope sees it; implemented by [`impl_kind!`] next to each kind.
pub(crate) trait Kind: Sized {
    const KIND: &'static str;
    type Spec;
    fn from_parts(metadata: Metadata, spec: Option<Self::Spec>) -> Result<Self, String>;
    fn into_parts(self) -> (Metadata, Self::Spec);
}

fn check_envelope(api_version: &str, kind: &str, expected: &str) -> Result<(), String> {
    if api_version != API_VERSION {
        return Err(format!(
            "unsupported apiVersion {api_version:?}; expected {API_VERSION}"
        ));
    }
    if kind != expected {
        return Err(format!("kind {kind:?} where {expected} was expected"));
    }
    Ok(())
}

impl<S> Wire<S> {
    pub(crate) fn into_kind<K: Kind<Spec = S>>(self) -> Result<K, String> {
        check_envelope(&self.api_version, &self.kind, K::KIND)?;
        K::from_parts(self.metadata, self.spec)
    }

    pub(crate) fn from_kind<K: Kind<Spec = S>>(doc: K) -> Self {
        let (metadata, spec) = doc.into_parts();
        Wire {
            api_version: API_VERSION.to_string(),
            kind: K::KIND.to_string(),
            metadata,
            spec: Some(spec),
        }
    }
}

/// The serde glue of one kind (`$ty` with spec `$spec`, written `kind: $name`), used through
/// `#[serde(try_from = "Wire<$spec>", into = "Wire<$spec>")]`. `$build` makes the document
/// from the envelope's parts: the kind's own rules for a missing spec or a namespace.
macro_rules! impl_kind {
    ($ty:ident, $spec:ident, $name:literal, |$md:ident, $sp:ident| $build:expr) => {
        impl $crate::wire::Kind for $ty {
            const KIND: &'static str = $name;
            type Spec = $spec;
            fn from_parts($md: $crate::meta::Metadata, $sp: Option<$spec>) -> Result<Self, String> {
                $build
            }
            fn into_parts(self) -> ($crate::meta::Metadata, $spec) {
                (self.metadata, self.spec)
            }
        }

        impl TryFrom<$crate::wire::Wire<$spec>> for $ty {
            type Error = String;
            fn try_from(w: $crate::wire::Wire<$spec>) -> Result<Self, String> {
                w.into_kind()
            }
        }

        impl From<$ty> for $crate::wire::Wire<$spec> {
            fn from(doc: $ty) -> Self {
                $crate::wire::Wire::from_kind(doc)
            }
        }
    };
}
pub(crate) use impl_kind;

/// Addresses are strings (`"10.0.3.7:4143"`) with an error message that says so, instead of the
/// generic "invalid socket address syntax".
pub(crate) mod socket_addrs {
    use super::*;

    pub fn serialize<S: Serializer>(
        addrs: &[SocketAddr],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(addrs.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<SocketAddr>, D::Error> {
        struct AddrsVisitor;

        impl<'de> Visitor<'de> for AddrsVisitor {
            type Value = Vec<SocketAddr>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ip:port addresses")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Addr(addr)) = seq.next_element()? {
                    out.push(addr);
                }
                Ok(out)
            }
        }

        deserializer.deserialize_seq(AddrsVisitor)
    }

    struct Addr(SocketAddr);

    impl<'de> Deserialize<'de> for Addr {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct AddrVisitor;

            impl Visitor<'_> for AddrVisitor {
                type Value = Addr;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an ip:port address such as \"10.0.3.7:4143\"")
                }

                fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                    v.parse()
                        .map(Addr)
                        .map_err(|_| E::custom(format!("not an ip:port address: {v:?}")))
                }
            }

            deserializer.deserialize_str(AddrVisitor)
        }
    }
}
