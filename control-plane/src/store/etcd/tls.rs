//! TLS to etcd (`--store etcd:https://…`): etcd's serving certificates are verified against
//! `--etcd-ca` (or the system's roots), and `--etcd-cert`/`--etcd-key` answer its
//! `--client-cert-auth`. Handshake failures are explained in the store's errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};

/// The TLS files of an etcd store; read when it opens, so a bad file fails the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// `--etcd-ca`: PEM roots that verify etcd's serving certificates; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// `--etcd-cert` and `--etcd-key`: for an etcd started with `--client-cert-auth`.
    pub client: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM certificate chain, the client's own first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: PathBuf,
}

impl EtcdTls {
    /// No TLS file given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// The flags given, for "only with https://" errors.
    pub(super) fn flags(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if self.ca.is_some() {
            flags.push("--etcd-ca");
        }
        if self.client.is_some() {
            flags.extend(["--etcd-cert", "--etcd-key"]);
        }
        flags
    }

    /// One client config for every member: TLS 1.2 or 1.3 (etcd speaks both), ALPN h2.
    pub(super) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let roots = match &self.ca {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        // Explicit provider, as in `weir_proto::dial`: no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| format!("etcd TLS: {err}"))?
            .with_root_certificates(roots);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let chain = certs_from_file("--etcd-cert", &client.cert)?;
                let key = key_from_file(&client.key)?;
                builder.with_client_auth_cert(chain, key).map_err(|err| {
                    format!(
                        "--etcd-cert {} with --etcd-key {}: {err}",
                        client.cert.display(),
                        client.key.display()
                    )
                })?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("{flag} {}: cannot read it: {err}", path.display()))
}

fn certs_from_file(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{flag} {}: invalid PEM: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (n, cert) in certs_from_file("--etcd-ca", path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|err| {
            format!(
                "--etcd-ca {}: certificate {} is not a usable root: {err}",
                path.display(),
                n + 1
            )
        })?;
    }
    Ok(roots)
}

fn key_from_file(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read("--etcd-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        format!(
            "--etcd-key {}: no private key in it ({err}; expected an unencrypted PEM \
             `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
            path.display()
        )
    })
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join("; "))
        };
        return Err(format!(
            "https etcd endpoints without --etcd-ca: no system root certificates found{why}; \
             give --etcd-ca FILE with the CA that signs etcd's certificates"
        ));
    }
    Ok(roots)
}

/// What the store's TLS was given, for the hints of [`explain`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Given {
    pub(super) ca: bool,
    pub(super) client_cert: bool,
}

impl From<&EtcdTls> for Given {
    fn from(tls: &EtcdTls) -> Given {
        Given {
            ca: tls.ca.is_some(),
            client_cert: tls.client.is_some(),
        }
    }
}

/// The TLS failure somewhere in `err`'s source chain, with what to check, e.g. "TLS: invalid
/// peer certificate: UnknownIssuer (etcd's certificate is not signed by a root in --etcd-ca)".
pub(super) fn explain(err: &(dyn std::error::Error + 'static), given: Given) -> Option<String> {
    let tls = chain(err).find_map(rustls_error)?;
    let hint = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) if given.ca => {
            Some("etcd's certificate is not signed by a root in --etcd-ca".to_string())
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "etcd's certificate is not signed by a system root: give --etcd-ca with its CA"
                .to_string(),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some("etcd's certificate does not name the endpoint's host".to_string()),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::BadCertificate,
        ) if !given.client_cert => Some(
            "etcd demands a client certificate (--client-cert-auth): give --etcd-cert and \
             --etcd-key"
                .to_string(),
        ),
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired,
        ) => Some(
            "etcd refused the client certificate: check --etcd-cert is signed by etcd's \
             --trusted-ca-file and is for client authentication"
                .to_string(),
        ),
        _ => None,
    };
    Some(match hint {
        Some(hint) => format!("TLS: {tls} ({hint})"),
        None => format!("TLS: {tls}"),
    })
}

/// `err` and its sources; an `io::Error` wrapping another error counts it as its source.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(err);
    std::iter::from_fn(move || {
        let current = next?;
        // `io::Error::source` skips the error it wraps and returns that error's source.
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => current.source(),
        };
        Some(current)
    })
}

fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    err.downcast_ref::<rustls::Error>()
}

/// `err`'s messages from the outside in, each once (wrappers often repeat their source's).
pub(super) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out: Vec<String> = Vec::new();
    for err in chain(err) {
        let message = err.to_string();
        if message.is_empty() || out.iter().any(|seen| seen.contains(&message)) {
            continue;
        }
        out.push(message);
    }
    out.join(": ")
}
