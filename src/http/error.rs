//! The one place where errors become HTTP statuses and `{"error": "..."}` bodies.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::service::{ApiError, ErrorCode};

/// The HTTP status of each code (Triton's choices where V2 leaves them open).
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::Unready => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The error's HTTP status.
    pub fn status(&self) -> StatusCode {
        status(self.code())
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::to_vec(&serde_json::json!({ "error": self.to_string() }))
            .expect("serializing a string map cannot fail");
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json");
        if status == StatusCode::UNAUTHORIZED {
            builder = builder.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    }
}
