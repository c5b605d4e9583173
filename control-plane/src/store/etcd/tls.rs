//! TLS to etcd (`--store etcd:https://…`): etcd's serving certificates are verified against
//! `--etcd-ca` (or the system's roots), and `--etcd-cert`/`--etcd-key` answer its
//! `--client-cert-auth`. Dialling, and explaining failures, is in [`super::dial`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
