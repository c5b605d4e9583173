//! Dialling etcd members over TLS, and saying why TLS failed. Under TLS 1.3 etcd refuses a
//! missing or bad client certificate after the client's handshake is done, with an alert that a
//! TCP reset often discards, so hyper reports a closed connection only: each member's
//! connections record the TLS failure they met (or, when a connection dies right after etcd
//! asked for a client certificate, that), and the store's errors name it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::tls::EtcdTls;

/// What the store's TLS was given, for the hints in its errors.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Given {
    ca: bool,
    client_cert: bool,
}

impl From<&EtcdTls> for Given {
    fn from(tls: &EtcdTls) -> Given {
        Given {
            ca: tls.ca.is_some(),
            client_cert: tls.client.is_some(),
        }
    }
}

/// The TLS failure of a member's latest connection, explained; cleared when it dials again.
#[derive(Debug, Default)]
pub(super) struct LastTls(Mutex<Option<String>>);

impl LastTls {
    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, value: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn set_if_empty(&self, value: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(value);
    }

    /// Keeps `err` if it is a TLS failure.
    fn record(&self, err: &io::Error, given: Given) {
        if let Some(tls) = explain(err, given) {
            self.set(Some(tls));
        }
    }
}

/// A channel to one member over TLS with `config`, its TLS failures recorded in `last`. The
/// server name checked is the URL's host (DNS name or IP address).
pub(super) fn connect_lazy(
    endpoint: Endpoint,
    config: Arc<rustls::ClientConfig>,
    given: Given,
    last: Arc<LastTls>,
) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let (config, last) = (config.clone(), last.clone());
        async move {
            last.set(None);
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
            let host = uri.host().ok_or_else(|| invalid("URL without a host"))?;
            let port = uri.port_u16().unwrap_or(2379);
            // `[::1]` in a URI is `::1` as a name.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string())
                .map_err(|_| invalid("URL host is not a DNS name or IP address"))?;
            let tcp = TcpStream::connect((bare, port)).await?;
            tcp.set_nodelay(true)?;
            // A config of its own (a cheap clone) to learn whether etcd asked this connection
            // for a client certificate.
            let asked = Arc::new(Asked::default());
            let mut config = (*config).clone();
            config.client_auth_cert_resolver = Arc::new(Asking {
                inner: config.client_auth_cert_resolver.clone(),
                asked: asked.clone(),
            });
            let stream = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .inspect_err(|err| last.record(err, given))?;
            Ok::<_, io::Error>(TokioIo::new(Watched {
                inner: stream,
                last,
                given,
                asked,
                answered: false,
            }))
        }
    }))
}

/// Whether the server asked one connection for a client certificate, and got one.
#[derive(Debug, Default)]
struct Asked {
    asked: AtomicBool,
    sent: AtomicBool,
}

/// The configured client certificate (or none), noting that the server asked for it.
#[derive(Debug)]
struct Asking {
    inner: Arc<dyn ResolvesClientCert>,
    asked: Arc<Asked>,
}

impl ResolvesClientCert for Asking {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self.inner.resolve(root_hint_subjects, sigschemes);
        self.asked.sent.store(key.is_some(), Ordering::Release);
        self.asked.asked.store(true, Ordering::Release);
        key
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A TLS stream that records the TLS failure it ends with (etcd's alert, or a close right
/// after etcd asked for a client certificate).
struct Watched {
    inner: TlsStream<TcpStream>,
    last: Arc<LastTls>,
    given: Given,
    asked: Arc<Asked>,
    /// etcd sent application data: it accepted the handshake.
    answered: bool,
}

impl Watched {
    /// The connection failed with `err`, or was closed (`None`).
    fn ended(&self, err: Option<&io::Error>) {
        if let Some(tls) = err.and_then(|err| explain(err, self.given)) {
            self.last.set(Some(tls));
            return;
        }
        if self.answered || !self.asked.asked.load(Ordering::Acquire) {
            return;
        }
        let why = if self.asked.sent.load(Ordering::Acquire) {
            "etcd closed the connection right after the handshake: it likely refused the \
             client certificate (check that --etcd-cert is signed by etcd's --trusted-ca-file, \
             is valid now and allows client authentication)"
        } else {
            "etcd asked for a client certificate and none is configured (etcd runs with \
             --client-cert-auth): give --etcd-cert and --etcd-key"
        };
        // An alert recorded before the close says more.
        self.last.set_if_empty(format!("TLS: {why}"));
    }

    fn seen<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &poll {
            self.ended(Some(err));
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            if buf.filled().len() > before {
                self.answered = true;
            } else if buf.remaining() > 0 {
                self.ended(None);
            }
        }
        self.seen(poll)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.seen(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.seen(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TLS failure somewhere in `err`'s source chain, with what to check, e.g. "TLS: invalid
/// peer certificate: UnknownIssuer (etcd's certificate is not signed by a root in --etcd-ca)".
pub(super) fn explain(err: &(dyn std::error::Error + 'static), given: Given) -> Option<String> {
    let tls = chain(err).find_map(|err| err.downcast_ref::<rustls::Error>())?;
    Some(match hint(tls, given) {
        Some(hint) => format!("TLS: {tls} ({hint})"),
        None => format!("TLS: {tls}"),
    })
}

fn hint(tls: &rustls::Error, given: Given) -> Option<&'static str> {
    use AlertDescription as Alert;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) if given.ca => {
            "etcd's certificate is not signed by a root in --etcd-ca"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "etcd's certificate is not signed by a system root: give --etcd-ca with its CA"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "etcd's certificate does not name the endpoint's host",
        // Go's TLS stack answers a missing client certificate with bad_certificate before
        // Go 1.21 and certificate_required since.
        rustls::Error::AlertReceived(Alert::CertificateRequired | Alert::BadCertificate)
            if !given.client_cert =>
        {
            "etcd demands a client certificate (--client-cert-auth): give --etcd-cert and \
             --etcd-key"
        }
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked,
        ) => {
            "etcd refused the client certificate: check that --etcd-cert is signed by etcd's \
             --trusted-ca-file, is valid now and allows client authentication"
        }
        _ => return None,
    })
}

/// `err` and its sources; an `io::Error` wrapping another error counts that one as its source.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(err);
    std::iter::from_fn(move || {
        let current = next?;
        // `io::Error::source` skips the error it wraps and returns that error's source.
        next = match current.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => current.source(),
        };
        Some(current)
    })
}

/// `first`, then the messages of `err`'s chain from the outside in, each once (wrappers often
/// repeat their source's): "transport error: tcp connect error: Connection refused".
pub(super) fn causes(first: String, err: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = vec![first];
    for err in err.into_iter().flat_map(chain) {
        let message = err.to_string();
        if message.is_empty() || out.iter().any(|seen| seen.contains(&message)) {
            continue;
        }
        out.push(message);
    }
    out.join(": ")
}
