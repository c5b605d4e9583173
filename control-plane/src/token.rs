//! The admin token: 32 random bytes, hex, in `DATA_DIR/admin.token` (0600), made on first
//! start and reused afterwards, so `weirctl` on the same host can read it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tonic::{Request, Status};

pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read admin token {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file {path} is empty; delete it and restart to make a new token")]
    Empty { path: PathBuf },
    #[error("cannot write admin token {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for the admin token: {0}")]
    Random(getrandom::Error),
}

#[derive(Clone)]
pub struct AdminToken {
    token: String,
    path: PathBuf,
}

impl std::fmt::Debug for AdminToken {
    // Keeps the secret out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// Reads `DATA_DIR/admin.token`, or creates it (and `data_dir`, mode 0700) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<AdminToken, TokenError> {
        ensure_dir(data_dir)?;
        let path = data_dir.join(TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(TokenError::Empty { path });
                }
                Ok(AdminToken { token, path })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let token = AdminToken::generate()?;
                write_secret(&path, &token)?;
                tracing::info!(path = %path.display(), "created admin token");
                Ok(AdminToken { token, path })
            }
            Err(source) => Err(TokenError::Read { path, source }),
        }
    }

    /// A new random token (256 bits, hex).
    pub fn generate() -> Result<String, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
        Ok(hex::encode(bytes))
    }

    /// Uses `token` (shared by every replica) and writes it to `DATA_DIR/admin.token` for local
    /// weirctl use, replacing what was there.
    pub fn install(data_dir: &Path, token: &str) -> Result<AdminToken, TokenError> {
        ensure_dir(data_dir)?;
        let path = data_dir.join(TOKEN_FILE);
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(TokenError::Empty { path });
        }
        write_secret(&path, &token)?;
        Ok(AdminToken { token, path })
    }

    pub fn secret(&self) -> &str {
        &self.token
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts `authorization: Bearer <token>`; anything else is UNAUTHENTICATED with a hint
    /// where the token lives.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(presented) if constant_time_eq(presented.as_bytes(), self.token.as_bytes()) => {
                Ok(())
            }
            Some(_) => Err(Status::unauthenticated(format!(
                "wrong admin token; use the one in {} on the control plane (weirctl --token or WEIR_TOKEN)",
                self.path.display()
            ))),
            None => Err(Status::unauthenticated(format!(
                "missing admin token: send `authorization: Bearer <token>` with the token from {} \
                 on the control plane (weirctl --token or WEIR_TOKEN)",
                self.path.display()
            ))),
        }
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess was
/// right. The length is not secret (always 64 hex digits).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn ensure_dir(dir: &Path) -> Result<(), TokenError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TokenError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes to a temporary file and renames it, so a crash never leaves a half-written token.
fn write_secret(path: &Path, token: &str) -> Result<(), TokenError> {
    let tmp = path.with_extension("token.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies when the file is created; a leftover temp file may be wider.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| TokenError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("nested/data");
        let first = AdminToken::load_or_create(&data).expect("create");
        assert_eq!(first.secret().len(), 64);
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(first.path()), 0o600);
        let again = AdminToken::load_or_create(&data).expect("reuse");
        assert_eq!(again.secret(), first.secret());
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
