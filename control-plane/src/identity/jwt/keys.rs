//! The issuer's current key set, from a file or an HTTPS URL, kept fresh: a file is re-read
//! when it changes, both are reloaded when a token names a key they lack (at most every
//! [`ON_DEMAND_MIN_INTERVAL`], so a stream of forged `kid`s cannot hammer the API server) and
//! periodically, since the issuer rotates keys on its own schedule.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::JwksLocation;
use super::fetch::{FetchError, Fetcher};
use super::jwks::{KeySet, ParseError};

pub const ON_DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Kubernetes keeps a retired key in its set for a while, so this need not be tight.
const URL_REFRESH_PERIOD: Duration = Duration::from_secs(300);
/// A stat per period: cheap, and it puts a changed file's keys in the log without a certify.
const FILE_CHECK_PERIOD: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fetch the JWKS from {url}: {source}")]
    Fetch { url: String, source: FetchError },
    #[error("the JWKS from {from} is unusable: {source}")]
    Parse { from: String, source: ParseError },
}

/// What identifies a version of the file without reading it (a ConfigMap or Secret mount
/// swaps a symlink, which changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    ino: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    last_on_demand: Option<Instant>,
    file: Option<FileStamp>,
    last_error: Option<String>,
}

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url(Fetcher),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url(fetcher) => write!(f, "{}", fetcher.uri),
        }
    }
}

#[derive(Debug)]
pub struct IssuerKeys {
    source: Source,
    current: ArcSwapOption<KeySet>,
    state: Mutex<State>,
}

impl IssuerKeys {
    /// Loads the keys once. A file that cannot be loaded is an error (a typo should stop the
    /// start); a URL that cannot be fetched is logged and retried by [`IssuerKeys::run`], since
    /// the API server may come up after the control plane.
    /// `service_account_dir` holds `token` and `ca.crt`, the credentials for a URL.
    pub async fn open(
        location: &JwksLocation,
        service_account_dir: &Path,
    ) -> Result<Arc<IssuerKeys>, JwksError> {
        let source = match location {
            JwksLocation::File(path) => Source::File(path.clone()),
            JwksLocation::Url(uri) => Source::Url(Fetcher {
                uri: uri.clone(),
                token: service_account_dir.join("token"),
                ca: service_account_dir.join("ca.crt"),
            }),
        };
        let keys = Arc::new(IssuerKeys {
            source,
            current: ArcSwapOption::empty(),
            state: Mutex::new(State::default()),
        });
        {
            let mut state = keys.state.lock().await;
            match (keys.load(&mut state).await, &keys.source) {
                (Ok(()), _) => {}
                (Err(err), Source::File(_)) => return Err(err),
                (Err(err), Source::Url(_)) => {
                    tracing::warn!(%err, "cannot load the service-account issuer's keys yet; retrying");
                }
            }
        }
        Ok(keys)
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Why the keys are not loaded, for a refusal's message.
    pub async fn last_error(&self) -> String {
        let state = self.state.lock().await;
        state
            .last_error
            .clone()
            .unwrap_or_else(|| format!("{} not loaded", self.source))
    }

    /// For a file: reloads it if it is not the version loaded (a stat, no read, otherwise).
    pub async fn reload_if_changed(&self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let mut state = self.state.lock().await;
        let stamp = stamp(path).await.ok();
        if stamp.is_some() && stamp != state.file {
            tracing::info!(path = %path.display(), "the JWKS file changed; reloading it");
            if let Err(err) = self.load(&mut state).await {
                tracing::warn!(%err, "keeping the previous service-account issuer keys");
            }
        }
    }

    /// Reloads because a token named a key not in the set, unless that was done less than
    /// [`ON_DEMAND_MIN_INTERVAL`] ago. A failure keeps the keys there are.
    pub async fn refresh_on_demand(&self, kid: &str) {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if state
            .last_on_demand
            .is_some_and(|t| now.duration_since(t) < ON_DEMAND_MIN_INTERVAL)
        {
            tracing::debug!(kid, "unknown key, but the keys were reloaded moments ago");
            return;
        }
        state.last_on_demand = Some(now);
        tracing::info!(kid, from = %self.source, "a token names an unknown key; reloading the issuer's keys");
        if let Err(err) = self.load(&mut state).await {
            tracing::warn!(%err, "keeping the previous service-account issuer keys");
        }
    }

    /// Refreshes forever: quickly while no keys are loaded, then on the period.
    pub async fn run(self: Arc<Self>) {
        let mut retry = RETRY_MIN;
        loop {
            let wait = match (self.current().is_some(), &self.source) {
                (false, _) => retry,
                (true, Source::File(_)) => FILE_CHECK_PERIOD,
                (true, Source::Url(_)) => URL_REFRESH_PERIOD,
            };
            tokio::time::sleep(wait).await;
            if let Source::File(_) = self.source {
                self.reload_if_changed().await;
                continue;
            }
            let mut state = self.state.lock().await;
            match self.load(&mut state).await {
                Ok(()) => retry = RETRY_MIN,
                Err(err) => {
                    retry = (retry * 2).min(RETRY_MAX);
                    tracing::warn!(%err, retry_in = ?retry, "cannot refresh the service-account issuer's keys");
                }
            }
        }
    }

    /// Reads, parses and installs the set; the caller holds the state lock, so loads never
    /// race each other.
    async fn load(&self, state: &mut State) -> Result<(), JwksError> {
        let result = self.read(state).await.and_then(|bytes| {
            KeySet::parse(&bytes).map_err(|source| JwksError::Parse {
                from: self.source.to_string(),
                source,
            })
        });
        match result {
            Ok((set, skipped)) => {
                for reason in &skipped {
                    tracing::warn!(from = %self.source, "skipping a JWKS key: {reason}");
                }
                let kids = set.kids().join(",");
                let changed = self.current().as_deref() != Some(&set);
                if changed {
                    tracing::info!(from = %self.source, kids, "loaded the service-account issuer's keys");
                }
                self.current.store(Some(Arc::new(set)));
                state.last_error = None;
                Ok(())
            }
            Err(err) => {
                state.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    async fn read(&self, state: &mut State) -> Result<Vec<u8>, JwksError> {
        match &self.source {
            Source::File(path) => {
                let read_err = |source| JwksError::Read {
                    path: path.clone(),
                    source,
                };
                // Stamp before reading: a write in between makes the next check read again.
                let stamp = stamp(path).await.map_err(read_err)?;
                let bytes = tokio::fs::read(path).await.map_err(read_err)?;
                state.file = Some(stamp);
                Ok(bytes)
            }
            Source::Url(fetcher) => fetcher.get().await.map_err(|source| JwksError::Fetch {
                url: fetcher.uri.to_string(),
                source,
            }),
        }
    }
}

async fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = tokio::fs::metadata(path).await?;
    Ok(FileStamp {
        len: meta.len(),
        ino: meta.ino(),
        modified: meta.modified().ok(),
    })
}
