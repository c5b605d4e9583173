//! Connecting to the control plane's admin API and turning its errors into messages that say
//! what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use weir_proto::admin::v1::admin_client::AdminClient;

pub type Client = AdminClient<InterceptedService<Channel, BearerToken>>;

/// A control plane that does not answer within this is reported as unreachable rather than
/// leaving the user staring at a hung terminal.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin calls are small; a minute covers a slow store without hanging scripts forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// tonic refuses responses over 4 MiB by default, and `status` of a 10,000-proxy mesh is about
/// 2 MiB; 64 MiB leaves room for 300,000 proxies (or long NACK errors) while still bounding
/// what a confused server can make weirctl buffer.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub const TOKEN_HELP: &str = "pass --token, --token-file or set WEIR_TOKEN / WEIR_TOKEN_FILE; \
    the admin token is in DATA_DIR/admin.token of `weir-control serve --data-dir DATA_DIR`";

pub const BUNDLE_HELP: &str = "pass --trust-bundle or set WEIR_TRUST_BUNDLE; `weir-control serve` \
    writes it to DATA_DIR/trust-bundle.pem";

/// Where weirctl connects and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    pub trust_bundle: Option<PathBuf>,
}

impl Target {
    /// `--token` wins over `--token-file` so a one-off token needs no file.
    pub fn resolve(
        server: &str,
        token: Option<&str>,
        token_file: Option<&Path>,
        trust_bundle: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let token = match (token, token_file) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?;
                Some(text.trim().to_string())
            }
            (None, None) => None,
        }
        .filter(|token| !token.is_empty());
        Ok(Target {
            server: server.to_string(),
            token,
            trust_bundle: trust_bundle.map(Path::to_path_buf),
        })
    }

    /// Connects, requiring a token: every admin call but `version` is refused without one, so
    /// fail before the network with advice instead of after it with UNAUTHENTICATED.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        if self.token.is_none() {
            return Err(anyhow!("no admin token: {TOKEN_HELP}"));
        }
        self.connect_anonymous().await
    }

    /// Connects with whatever token there is (possibly none).
    pub async fn connect_anonymous(&self) -> anyhow::Result<Client> {
        let interceptor = BearerToken::new(self.token.as_deref())?;
        // URLs first: a typo is reported as such, not as a missing bundle.
        let mut endpoints = Vec::new();
        for url in self
            .server
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            endpoints.push(
                weir_proto::dial::endpoint(url)
                    .map_err(|err| anyhow!("--server: {err}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT),
            );
        }
        let path = self
            .trust_bundle
            .as_deref()
            .ok_or_else(|| anyhow!("no trust bundle to verify the control plane: {BUNDLE_HELP}"))?;
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the trust bundle {}", path.display()))?;
        let roots = weir_proto::dial::roots_from_pem(&pem)
            .map_err(|err| anyhow!("{}: {err}", path.display()))?;
        let config = weir_proto::dial::client_config(roots)?;
        // Several replicas (`--server https://a:8090,https://b:8090`): the first that answers.
        let mut failures = Vec::new();
        let mut connected = None;
        for url in self
            .server
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let endpoint = weir_proto::dial::endpoint(url)
                .map_err(|err| anyhow!("--server: {err}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT);
            match weir_proto::dial::connect(endpoint, config.clone()).await {
                Ok(channel) => {
                    connected = Some(channel);
                    break;
                }
                Err(err) => failures.push(error_chain(&err)),
            }
        }
        let channel = connected.ok_or_else(|| match failures.len() {
            0 => anyhow!("--server: no URL given"),
            _ => anyhow!("{}", failures.join("; ")),
        })?;
        Ok(admin_client(channel, interceptor))
    }

    /// A gRPC failure as a message for stderr: validation errors verbatim (the server already
    /// lists one per line with file, document and field), connectivity and auth with advice.
    pub fn explain(&self, status: &Status) -> anyhow::Error {
        let message = status.message();
        match status.code() {
            Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => {
                anyhow!("{message}")
            }
            Code::FailedPrecondition => anyhow!("{message}"),
            // The control plane answered; what it could not reach is its shared store.
            Code::Unavailable if message.starts_with("etcd store") => anyhow!(
                "the control plane at {} cannot use its store: {message}",
                self.server
            ),
            Code::Unavailable => anyhow!(
                "cannot reach the control plane at {}: {}",
                self.server,
                nonempty(message, "unavailable")
            ),
            Code::Unauthenticated if self.token.is_none() => {
                anyhow!("the control plane requires an admin token: {TOKEN_HELP}")
            }
            Code::Unauthenticated => anyhow!(
                "the control plane rejected the admin token ({}); check that it matches \
                 DATA_DIR/admin.token of weir-control",
                nonempty(message, "unauthenticated")
            ),
            Code::PermissionDenied => anyhow!(
                "the token is not allowed to do this: {}",
                nonempty(message, "permission denied")
            ),
            Code::DeadlineExceeded => anyhow!(
                "the control plane at {} did not answer in time: {}",
                self.server,
                nonempty(message, "deadline exceeded")
            ),
            Code::Unimplemented => anyhow!(
                "the control plane at {} does not support this call (older server?): {}",
                self.server,
                nonempty(message, "unimplemented")
            ),
            code => anyhow!(
                "control plane error ({code:?}): {}",
                nonempty(message, "no details")
            ),
        }
    }
}

/// The admin client on a connected channel, with the response limit raised.
fn admin_client(channel: Channel, interceptor: BearerToken) -> Client {
    AdminClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

fn nonempty<'a>(text: &'a str, fallback: &'a str) -> &'a str {
    if text.is_empty() { fallback } else { text }
}

/// tonic's transport errors say "transport error" at the top and the useful part ("Connection
/// refused") in their sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

// === impl BearerToken ===

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = token
            .map(|token| {
                let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| anyhow!("the admin token contains characters not allowed in an HTTP header; {TOKEN_HELP}"))?;
                value.set_sensitive(true);
                Ok::<_, anyhow::Error>(value)
            })
            .transpose()?;
        Ok(BearerToken(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
#[path = "client_limit_tests.rs"]
mod limit_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn target(token: Option<&str>) -> Target {
        Target {
            server: "https://127.0.0.1:1".into(),
            token: token.map(Into::into),
            trust_bundle: None,
        }
    }

    #[test]
    fn token_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "  secret\n").expect("write");
        let t = Target::resolve("https://x", None, Some(&file), None).expect("resolve");
        assert_eq!(t.token.as_deref(), Some("secret"));
        let t = Target::resolve("https://x", Some("flag"), Some(&file), None).expect("resolve");
        assert_eq!(t.token.as_deref(), Some("flag"));
        let t = Target::resolve("https://x", Some("  "), None, None).expect("resolve");
        assert_eq!(t.token, None);
        let err = Target::resolve("https://x", None, Some(&dir.path().join("missing")), None)
            .expect_err("missing file");
        assert!(err.to_string().contains("token file"));
    }

    #[test]
    fn interceptor_sets_bearer() {
        let mut interceptor = BearerToken::new(Some("abc")).expect("token");
        let request = interceptor.call(Request::new(())).expect("call");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
    }

    #[test]
    fn explanations() {
        let invalid = Status::invalid_argument("a.yaml: ServicePolicy shop/p: spec: x\nb: y");
        assert_eq!(
            target(Some("t")).explain(&invalid).to_string(),
            "a.yaml: ServicePolicy shop/p: spec: x\nb: y"
        );
        let unavailable = target(Some("t")).explain(&Status::unavailable("refused"));
        assert!(
            unavailable
                .to_string()
                .starts_with("cannot reach the control plane at https://127.0.0.1:1: refused")
        );
        let anonymous = target(None).explain(&Status::unauthenticated(""));
        assert!(anonymous.to_string().contains("admin.token"));
        let wrong = target(Some("t")).explain(&Status::unauthenticated("bad token"));
        assert!(wrong.to_string().contains("rejected the admin token"));
    }

    #[tokio::test]
    async fn missing_token_fails_before_connecting() {
        let err = target(None).connect().await.expect_err("no token");
        assert!(err.to_string().contains("DATA_DIR/admin.token"));
    }

    #[tokio::test]
    async fn server_url_needs_a_scheme() {
        let mut t = target(Some("t"));
        t.server = "cp:8090".into();
        let err = t.connect().await.expect_err("no scheme");
        assert!(err.to_string().contains("expected https://"), "{err}");
        t.server = "http://cp:8090".into();
        let err = t.connect().await.expect_err("plaintext");
        assert!(
            err.to_string().contains("serves TLS; use https://"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_trust_bundle_is_explained() {
        let err = target(Some("t")).connect().await.expect_err("no bundle");
        assert!(err.to_string().contains("--trust-bundle"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_server_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle.pem");
        // Any CA certificate will do: nothing answers on port 1 to be verified against it.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        std::fs::write(&bundle, root.pem()).expect("write bundle");
        let mut t = target(Some("t"));
        t.trust_bundle = Some(bundle);
        let err = t.connect().await.expect_err("nothing listens on port 1");
        assert!(
            err.to_string()
                .starts_with("cannot reach the control plane at https://127.0.0.1:1:"),
            "{err}"
        );
    }
}
