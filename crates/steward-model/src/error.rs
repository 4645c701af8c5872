//! The model's error type.

/// Errors from decoding or validating model messages.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Bytes that should hold a protobuf message do not.
    #[error(
        "cannot decode {what} from protobuf bytes: {source}; the data is corrupt or not a c1.connector.v2 message"
    )]
    Decode {
        /// Which message was expected.
        what: &'static str,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// An `Any` annotation has a type URL other than the one asked for.
    #[error("annotation has type URL {found:?}, expected {expected:?}")]
    WrongType {
        /// The URL wanted.
        expected: String,
        /// The URL present.
        found: String,
    },
    /// A required field is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}
