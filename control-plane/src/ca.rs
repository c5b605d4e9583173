//! The mesh's certificate authority: a root made on first start (kept in the store), or a root or
//! intermediate brought from the user's PKI with `--ca-cert`/`--ca-key`. It signs one kind of
//! certificate: a workload leaf whose only name is a SPIFFE URI SAN (design §3, §5).
//!
//! Everything here is synchronous and pure apart from reading files in [`Ca::load`], so tests
//! build a CA in-process with [`generate_root`] and [`Ca::from_pem`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates are backdated by this much so a peer whose clock is a little behind ours does
/// not reject a certificate it has just been given.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a generated root. Long, because replacing a root means re-issuing every leaf and
/// redistributing the bundle; the leaves are what is short-lived.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM \"CERTIFICATE\" block found")]
    NoCertificate { what: String },
    #[error("{what}: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error(
        "CA key: {0} (expected an unencrypted PKCS#8 \"PRIVATE KEY\" PEM; convert with \
         `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`)"
    )]
    BadKey(String),
    #[error(
        "the CA key does not belong to the CA certificate (the first certificate of --ca-cert)"
    )]
    KeyMismatch,
    #[error("cannot generate the CA: {0}")]
    Generate(String),
}

/// A refusal of a CSR, before or after comparing its identity. Everything but `Sign` is the
/// caller's mistake (INVALID_ARGUMENT); `Sign` and `Expired` are ours.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not a PEM \"CERTIFICATE REQUEST\": {0}")]
    Unparseable(String),
    #[error("CSR signature does not verify (no proof of possession of the key): {0}")]
    BadSignature(String),
    #[error(
        "CSR must carry exactly one URI SAN (the SPIFFE id spiffe://<trust-domain>/ns/<ns>/sa/<sa>), found {0}"
    )]
    UriSans(usize),
    #[error("CSR public key is not supported ({0}); use ECDSA P-256, P-384, Ed25519 or RSA")]
    UnsupportedKey(String),
    #[error("CA certificate expired at {0}; give the control plane a new --ca-cert/--ca-key")]
    CaExpired(OffsetDateTime),
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// A CA certificate and key as PEM: what the store keeps for a generated root.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPem {
    // Keeps the private key out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A CSR whose signature has been checked.
#[derive(Debug)]
pub struct Csr {
    /// The single URI SAN, as written in the CSR.
    pub uri: String,
    spki: SubjectPublicKeyInfo,
}

/// A signed leaf and what a proxy needs with it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then any intermediates.
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    pub not_after: SystemTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after the leaf: the signing certificate when it is an intermediate,
    /// and any further intermediates given with it.
    intermediates_pem: String,
    trust_bundle_pem: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A self-signed ECDSA P-256 root for `trust_domain`, valid for ten years. Its URI SAN is the
/// trust domain (`spiffe://weir.local`), as SPIFFE recommends for signing certificates.
pub fn generate_root(trust_domain: &str) -> Result<CaPem, CaError> {
    let gen_err = |err: rcgen::Error| CaError::Generate(err.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = ca_params(&format!("weir root CA ({trust_domain})"))?;
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_LIFETIME;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A CSR for `uri` (one URI SAN, nothing else) signed by `key`: what a proxy sends. For tests
/// and tools; the proxy has its own.
pub fn csr_pem(uri: &str, key: &KeyPair) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(uri)?];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|err| CaError::Generate(err.to_string()))
}

// === impl Ca ===

impl Ca {
    /// `cert_pem` is the signing certificate, optionally followed by the rest of its chain (as
    /// cert-manager's `tls.crt` is); `key_pem` its PKCS#8 key. The trust bundle is
    /// `trust_bundle_pem` when given, else the self-signed certificates of `cert_pem`, else the
    /// signing certificate itself (peers then anchor on the intermediate).
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_bundle_pem: Option<&str>,
    ) -> Result<Ca, CaError> {
        let certs = pem_certificates("CA certificate", cert_pem)?;
        let Some(signing_der) = certs.first() else {
            return Err(CaError::NoCertificate {
                what: "CA certificate".into(),
            });
        };
        let signing = parse_cert("CA certificate", signing_der)?;
        let bad = |reason: &str| CaError::BadCertificate {
            what: "CA certificate".into(),
            reason: reason.into(),
        };
        if !signing.is_ca() {
            return Err(bad("not a CA (basicConstraints CA:TRUE is missing)"));
        }
        if let Ok(Some(usage)) = signing.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(bad("its key usage does not allow signing certificates"));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|err| CaError::BadKey(err.to_string()))?;
        if key.subject_public_key_info() != signing.public_key().raw {
            return Err(CaError::KeyMismatch);
        }
        let not_after = signing.validity().not_after.to_datetime();
        let mut intermediates = Vec::new();
        let mut roots = Vec::new();
        for der in &certs {
            if self_signed(&parse_cert("CA certificate", der)?) {
                roots.push(der.as_slice());
            } else {
                intermediates.push(der.as_slice());
            }
        }
        let trust_bundle_pem = match trust_bundle_pem {
            Some(bundle) => {
                let bundle = pem_certificates("trust bundle", bundle)?;
                for der in &bundle {
                    parse_cert("trust bundle", der)?;
                }
                bundle.iter().map(|der| to_pem(der)).collect()
            }
            None if !roots.is_empty() => roots.iter().map(|der| to_pem(der)).collect(),
            None => to_pem(signing_der),
        };
        let issuer = Issuer::from_ca_cert_der(&signing_der.as_slice().into(), key)
            .map_err(|err| bad(&err.to_string()))?;
        Ok(Ca {
            issuer,
            intermediates_pem: intermediates.iter().map(|der| to_pem(der)).collect(),
            trust_bundle_pem,
            not_after,
        })
    }

    /// Reads `--ca-cert`, `--ca-key` and the optional `--trust-bundle`.
    pub fn load(cert: &Path, key: &Path, trust_bundle: Option<&Path>) -> Result<Ca, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let bundle = trust_bundle.map(read).transpose()?;
        Ca::from_pem(&read(cert)?, &read(key)?, bundle.as_deref())
    }

    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Signs a CA certificate below this one, e.g. to test the `--ca-cert` path with an
    /// intermediate. Returns the new CA's certificate followed by this CA's chain.
    pub fn sign_intermediate(&self, name: &str) -> Result<CaPem, CaError> {
        let gen_err = |err: rcgen::Error| CaError::Generate(err.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = ca_params(name)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = self.not_after.min(now + ROOT_LIFETIME);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(CaPem {
            cert_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a workload leaf for `csr`'s key with `uri` as its only name, valid from
    /// [`CLOCK_SKEW`] ago for `ttl` (never past the CA's own expiry). The caller has already
    /// checked that `uri` is the identity the caller may have.
    pub fn sign(&self, csr: &Csr, uri: &str, ttl: Duration) -> Result<Issued, CsrError> {
        let now = OffsetDateTime::now_utc();
        if now >= self.not_after {
            return Err(CsrError::CaExpired(self.not_after));
        }
        let sign_err = |err: rcgen::Error| CsrError::Sign(err.to_string());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(uri).map_err(|err| CsrError::Sign(err.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(CsrError::Sign)?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = self.not_after.min(now + ttl);
        let leaf = params
            .signed_by(&csr.spki, &self.issuer)
            .map_err(sign_err)?;
        Ok(Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.intermediates_pem),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_after: params.not_after.into(),
        })
    }
}

impl Ca {
    /// Signs a serving certificate for the control plane itself, with a key made here: its DNS
    /// names and IP addresses (what proxies and weirctl dial) and its SPIFFE id. Returns the
    /// chain and the key as PEM.
    pub fn sign_server(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        uri: &str,
        ttl: Duration,
    ) -> Result<(Issued, String), CsrError> {
        let sign_err = |err: rcgen::Error| CsrError::Sign(err.to_string());
        let now = OffsetDateTime::now_utc();
        if now >= self.not_after {
            return Err(CsrError::CaExpired(self.not_after));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "weir-control");
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len() + 1);
        for name in dns_names {
            let name = Ia5String::try_from(name.as_str())
                .map_err(|err| CsrError::Sign(format!("server name {name:?}: {err}")))?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        sans.push(SanType::URI(
            Ia5String::try_from(uri).map_err(|err| CsrError::Sign(err.to_string()))?,
        ));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(CsrError::Sign)?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = self.not_after.min(now + ttl);
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        let issued = Issued {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_after: params.not_after.into(),
        };
        Ok((issued, key.serialize_pem()))
    }
}

// === impl Csr ===

impl Csr {
    /// Parses a PEM CSR, checks its signature (proof that the caller holds the key) and takes its
    /// single URI SAN. Other requested names and extensions are ignored: the leaf is built from
    /// scratch, never copied from the request.
    pub fn parse(pem: &str) -> Result<Csr, CsrError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|err| CsrError::Unparseable(err.to_string()))?;
        if !block.label.ends_with("CERTIFICATE REQUEST") {
            return Err(CsrError::Unparseable(format!(
                "found a PEM {:?} block",
                block.label
            )));
        }
        let (_, csr) = X509CertificationRequest::from_der(&block.contents)
            .map_err(|err| CsrError::Unparseable(err.to_string()))?;
        csr.verify_signature()
            .map_err(|err| CsrError::BadSignature(err.to_string()))?;
        let mut uris = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_string());
                    }
                }
            }
        }
        let uri = match uris.as_slice() {
            [one] => one.clone(),
            other => return Err(CsrError::UriSans(other.len())),
        };
        let spki = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|err| CsrError::UnsupportedKey(err.to_string()))?;
        Ok(Csr { uri, spki })
    }
}

// === helpers ===

fn ca_params(common_name: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "weir");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // A generated CA signs leaves (and, in tests, one intermediate) only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial().map_err(CaError::Generate)?);
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|err| CaError::Generate(format!("{uri:?} is not a valid URI SAN: {err}")))
}

/// 16 random bytes with the top bit clear: unique per certificate (so two certificates for the
/// same key are still told apart) and positive as RFC 5280 requires.
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness for a serial: {err}"))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The DER of every "CERTIFICATE" block, in order.
fn pem_certificates(what: &str, pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| CaError::BadCertificate {
            what: what.into(),
            reason: format!("bad PEM: {err}"),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(CaError::NoCertificate { what: what.into() });
    }
    Ok(out)
}

fn parse_cert<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|err| CaError::BadCertificate {
            what: what.into(),
            reason: err.to_string(),
        })
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// PEM with 64-column lines, as every tool expects.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// One certificate of a bundle as people compare them: subject, SHA-256 of the DER, expiry.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    pub sha256: String,
    pub not_after_unix_ms: i64,
}

/// Summaries of every certificate in `pem`; unparseable blocks are skipped.
pub fn summarize(pem: &str) -> Vec<CertSummary> {
    let Ok(ders) = pem_certificates("bundle", pem) else {
        return Vec::new();
    };
    ders.iter()
        .filter_map(|der| {
            let cert = parse_cert("bundle", der).ok()?;
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            Some(CertSummary {
                subject: cert.subject().to_string(),
                sha256: hex::encode(digest.as_ref()),
                not_after_unix_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
            })
        })
        .collect()
}
