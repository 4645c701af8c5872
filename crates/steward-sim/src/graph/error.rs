//! Graph's error envelope: `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.

use axum::http::StatusCode;

use crate::store::WriteError;

#[derive(Debug, Clone)]
pub struct GraphError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl GraphError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "Resource not found for the segment '{}'.",
                path.rsplit('/').next().unwrap_or(path)
            ),
        )
    }

    pub fn denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }

    pub fn unsupported_query() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "Unsupported Query.",
        )
    }

    pub fn throttled(seconds: u64) -> Self {
        GraphError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "TooManyRequests",
            message: "Please retry again later.".into(),
            retry_after: Some(seconds),
        }
    }

    pub fn body(&self, request_id: &str, client_request_id: &str, date: &str) -> serde_json::Value {
        serde_json::json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {"date": date, "request-id": request_id, "client-request-id": client_request_id},
        }})
    }

    /// Maps a store error for a relationship write on `property` ("members", "owners").
    pub fn from_write(e: WriteError, property: &str) -> Self {
        match e {
            WriteError::NotFound(id) => Self::not_found(&id.to_string()),
            WriteError::ReferenceNotFound(id) => Self::not_found(&id),
            WriteError::AlreadyExists => Self::bad_request(format!(
                "One or more added object references already exist for the following modified properties: '{property}'."
            )),
            WriteError::Absent => Self::not_found(property),
            WriteError::Refused(m) | WriteError::BadRequest(m) => Self::bad_request(m),
        }
    }
}
