//! The one place where errors become HTTP statuses and `{"error": "..."}` bodies.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::batching::SchedulerError;
use crate::protocol::ProtocolError;
use crate::repository::RepositoryError;
use crate::rollout::RolloutError;
use crate::routing::{InferError, RouteError};

/// Every way a request can fail, from every layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no endpoint {method} {path}")]
    NoEndpoint { method: String, path: String },
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {seconds} s (body_read_timeout_s)")]
    BodyTimeout { seconds: u64 },
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported Content-Encoding '{0}' (supported: gzip, deflate, identity)")]
    UnsupportedEncoding(String),
    /// A readiness probe's "false": the V2 protocol answers it with a 4xx (Triton: 400).
    #[error("{0}")]
    Unready(String),
    #[error("{0}")]
    NotMonitored(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error(transparent)]
    Training(#[from] crate::training::jobs::JobError),
}

impl From<crate::offload::OffloadError> for ApiError {
    fn from(e: crate::offload::OffloadError) -> Self {
        match e {
            crate::offload::OffloadError::Busy(_) => ApiError::Busy(e.to_string()),
            crate::offload::OffloadError::Stopped(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        ApiError::Infer(InferError::Route(e))
    }
}

impl ApiError {
    /// The status of each error. Exhaustive on purpose: a new variant must choose one.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoEndpoint { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unready(_) => StatusCode::BAD_REQUEST,
            ApiError::NotMonitored(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Protocol(_) => StatusCode::BAD_REQUEST,
            ApiError::Infer(e) => match e {
                InferError::Route(r) => route_status(r),
                InferError::Invalid(_) => StatusCode::BAD_REQUEST,
                InferError::Scheduler(s) => match s {
                    SchedulerError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    SchedulerError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                    SchedulerError::Stopped { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    SchedulerError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
                },
            },
            ApiError::Repository(e) => match e {
                RepositoryError::UnknownModel(_) => StatusCode::NOT_FOUND,
                RepositoryError::BadName(_) => StatusCode::BAD_REQUEST,
                RepositoryError::BadRequest(_) => StatusCode::BAD_REQUEST,
                RepositoryError::LoadFailed { .. } => StatusCode::BAD_REQUEST,
                RepositoryError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                RepositoryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                RepositoryError::Conflict(_) => StatusCode::CONFLICT,
            },
            ApiError::Rollout(e) => match e {
                RolloutError::UnknownModel(_) => StatusCode::NOT_FOUND,
                RolloutError::VersionNotReady { .. } => StatusCode::CONFLICT,
                RolloutError::NoCandidate(_) => StatusCode::CONFLICT,
                RolloutError::BadRequest(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::Training(e) => {
                use crate::training::jobs::JobError;
                match e {
                    JobError::UnknownModel(_) | JobError::UnknownJob(_) => StatusCode::NOT_FOUND,
                    JobError::Conflict(_) => StatusCode::CONFLICT,
                    JobError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                    JobError::Config(_) => StatusCode::BAD_REQUEST,
                }
            }
        }
    }

    /// The gRPC status code of each error, derived from its HTTP status so that both front
    /// ends always agree (the mapping of gRPC's HTTP guidance, and Triton's choices).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status() {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::FailedPrecondition,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
            _ => Code::Internal,
        }
    }

    /// The error as a gRPC status: its code and the same message an HTTP client reads.
    pub fn into_status(self) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), self.to_string())
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

fn route_status(e: &RouteError) -> StatusCode {
    match e {
        RouteError::UnknownModel(_) | RouteError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
        RouteError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}
