//! The crate's error type, classified by what the caller should do about it.
//!
//! Every layer below `service` returns [`Error`]; `impl From<Error> for tonic::Status` (in
//! `service`) maps it to a gRPC status in one exhaustive `match`, so the status code of every
//! failure is decided in exactly one place.

/// A failure, classified by what the caller should do. The message always names the field or the
/// object and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed: fix it, do not retry it as is.
    #[error("{0}")]
    InvalidArgument(String),
    /// A collection, entity or model version that the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object the request would create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the request (no model yet, training running...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size or capacity limit was hit (message too large, queue full, disk full).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is starting up or shutting down: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The server does not implement this yet.
    #[error("{0}")]
    Unimplemented(String),
    /// Data on disk is corrupt.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or an unexpected I/O failure.
    #[error("{0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest prefix of a client-provided value that an error message quotes, in bytes.
pub const ECHO_BYTES: usize = 64;

/// A client-provided value (a name, an id, a token) as an error message quotes it: Debug-quoted
/// like `{value:?}`, and when longer than [`ECHO_BYTES`] cut at a char boundary with its length
/// noted, `"aaaa…"(20000 bytes)`. A 20 KB name must not make the message, and with it the
/// `grpc-message` trailer, exceed what clients accept (16 KiB of metadata by default).
pub fn echo(value: &str) -> String {
    if value.len() <= ECHO_BYTES {
        return format!("{value:?}");
    }
    let mut end = ECHO_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let head = format!("{:?}", &value[..end]);
    // the closing quote goes after the ellipsis: the value continues
    format!("{}…\"({} bytes)", &head[..head.len() - 1], value.len())
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// An I/O failure, with what was being done. A full disk is a resource problem for the caller,
    /// everything else is internal.
    pub fn io(context: impl std::fmt::Display, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            Error::ResourceExhausted(format!("{context}: disk full: {e}"))
        } else {
            Error::Internal(format!("{context}: {e}"))
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => Error::DataLoss(format!("storage corruption: {e}")),
            sled::Error::Io(io) => Error::io("storage", io),
            // A collection's tree is dropped when it is deleted; a request that found the
            // collection before that reads or writes a tree that is gone.
            sled::Error::CollectionNotFound(_) => {
                Error::NotFound("collection not found: it was deleted while the request ran".into())
            }
            other => Error::Internal(format!("storage: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_short_values_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(echo("ads-jp"), "\"ads-jp\"");
        assert_eq!(echo(&"x".repeat(64)), format!("{:?}", "x".repeat(64)));
        let long = echo(&"x".repeat(20_000));
        assert_eq!(long, format!("\"{}…\"(20000 bytes)", "x".repeat(64)));
        // 'é' is 2 bytes: byte 64 is the second byte of the 32nd one
        let e = "a".to_string() + &"é".repeat(100);
        assert_eq!(echo(&e), format!("\"a{}…\"(201 bytes)", "é".repeat(31)));
        // escapes do not let the quote grow without bound
        assert!(echo(&"\n".repeat(10_000)).len() < 200);
    }
}
