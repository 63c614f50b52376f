//! The errors a client reports.

use pbft_config::ConfigError;
use pbft_net::NetError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No 2f+1 matching replies arrived before the request timeout (or the replicas refused
    /// this client's key). The operation may still execute later; it executes at most once.
    #[error("timed out: no 2f+1 matching replies before the request timeout")]
    Timeout,
    /// The replicas agreed on a result that says the operation was refused, or the operation
    /// can never be accepted (too large, undecodable).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The client configuration is unusable; the error names the file and the field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] NetError),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The operation executed, but the replicas no longer hold its result (the client waited
    /// longer than their result cache lasts).
    #[error("the operation executed, but its result is no longer cached by the replicas")]
    ResultForgotten,
    /// The client's session expired at the replicas before they answered: the operation will
    /// not execute from now on (it may have executed just before the expiry, if an answer was
    /// lost). A new client starts a new session.
    #[error("the client session expired; the operation will not be executed")]
    SessionExpired,
    /// The replicas' client table is full of sessions active within the last checkpoint
    /// interval, so this new session was not admitted; the operation was not executed and may
    /// be tried again later.
    #[error("the cluster holds as many active client sessions as it may; the operation was not executed, try again later")]
    SessionsFull,
}

/// Why [`crate::Client::status_all`] has no status for a replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusUnavailable {
    /// Connected, but no report came back in time.
    #[error("connected, but no status report within {0:?}")]
    NoReport(std::time::Duration),
    /// No connection to the replica.
    #[error("unreachable: no connection")]
    Unreachable,
}
