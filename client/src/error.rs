//! The errors a client reports.

/// Why a client operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No f+1 matching replies arrived before the request timeout. The operation may still
    /// execute later; it executes at most once.
    #[error("timed out: no f+1 matching replies before the request timeout")]
    Timeout,
    /// The replicas agreed on a result that says the operation was refused, or the operation
    /// can never be accepted (too large, undecodable).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The client configuration is unusable; the message names the field.
    #[error("configuration: {0}")]
    Config(String),
    /// The transport could not be set up, or the client was closed.
    #[error("transport: {0}")]
    Transport(String),
}
