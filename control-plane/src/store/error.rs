//! Why a store call failed, and how each failure reads to a gRPC client.

use weir_policy::Errors;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// etcd did not answer or refused: the message names the endpoints and what to check.
    #[error("{0}")]
    Unavailable(String),
    #[error("store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Invalid(Errors),
    #[error("cannot make the store file {path} private (0600): {source}")]
    Private {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

macro_rules! redb_errors {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(err: redb::$t) -> Self {
                StoreError::Db(err.into())
            }
        }
    )*};
}
redb_errors!(
    DatabaseError,
    TransactionError,
    TableError,
    StorageError,
    CommitError
);

/// How a store failure reads to a gRPC client: a store that is away is `unavailable` (worth a
/// retry), not an internal error.
pub(crate) fn grpc_status(err: StoreError) -> tonic::Status {
    use tonic::Status;
    match err {
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        StoreError::Precondition(why) => Status::failed_precondition(why),
        StoreError::Invalid(errors) => Status::invalid_argument(errors.to_string()),
        StoreError::Unavailable(why) => {
            tracing::warn!(reason = %why, "store unavailable");
            Status::unavailable(why)
        }
        err @ (StoreError::Db(_) | StoreError::Corrupt { .. } | StoreError::Private { .. }) => {
            tracing::error!(%err, "store error");
            Status::internal(format!("{err}"))
        }
    }
}
