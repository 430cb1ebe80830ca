//! Every way a request can fail, from every layer, and the one [`ErrorCode`] each failure has.
//! The front ends map codes, never variants: HTTP to a status (`http::error`), gRPC to a status
//! code (`grpc`), each in one exhaustive match, so both always agree on what a failure is.

use crate::batching::SchedulerError;
use crate::protocol::ProtocolError;
use crate::repository::RepositoryError;
use crate::rollout::RolloutError;
use crate::routing::{InferError, RouteError};

/// What kind of failure an error is, whichever front end reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or invalid input: bad JSON, a wrong shape, a bad name or setting.
    InvalidArgument,
    /// A readiness probe's "false" (V2 answers it with a 4xx; Triton: 400).
    Unready,
    /// No such model, version, job, report or endpoint.
    NotFound,
    /// The method is not served on that path.
    MethodNotAllowed,
    /// The payload is larger than a limit.
    TooLarge,
    /// The payload did not arrive in time.
    PayloadTimeout,
    /// The answer was not computed in time (a queue timeout).
    DeadlineExceeded,
    /// A content encoding the server does not decode.
    UnsupportedEncoding,
    /// The state does not allow it now (a version not ready, a job already running).
    Conflict,
    /// No credentials.
    Unauthenticated,
    /// Credentials that do not allow it.
    PermissionDenied,
    /// A limit is held: retry later.
    Unavailable,
    /// A fault of the server or its engine.
    Internal,
}

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
    /// The code of each error. Exhaustive on purpose: a new variant must choose one.
    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            ApiError::NoEndpoint { .. } => C::NotFound,
            ApiError::MethodNotAllowed { .. } => C::MethodNotAllowed,
            ApiError::BodyTooLarge { .. } => C::TooLarge,
            ApiError::BodyTimeout { .. } => C::PayloadTimeout,
            ApiError::Busy(_) => C::Unavailable,
            ApiError::BadRequest(_) => C::InvalidArgument,
            ApiError::UnsupportedEncoding(_) => C::UnsupportedEncoding,
            ApiError::Unready(_) => C::Unready,
            ApiError::NotMonitored(_) => C::NotFound,
            ApiError::Unauthorized(_) => C::Unauthenticated,
            ApiError::Forbidden(_) => C::PermissionDenied,
            ApiError::Internal(_) => C::Internal,
            ApiError::Protocol(_) => C::InvalidArgument,
            ApiError::Infer(e) => match e {
                InferError::Route(r) => route_code(r),
                InferError::Invalid(_) => C::InvalidArgument,
                InferError::Scheduler(s) => match s {
                    SchedulerError::QueueFull { .. } => C::Unavailable,
                    SchedulerError::Timeout { .. } => C::DeadlineExceeded,
                    SchedulerError::Stopped { .. } => C::Unavailable,
                    SchedulerError::Engine(_) => C::Internal,
                },
            },
            ApiError::Repository(e) => match e {
                RepositoryError::UnknownModel(_) => C::NotFound,
                RepositoryError::BadName(_) => C::InvalidArgument,
                RepositoryError::BadRequest(_) => C::InvalidArgument,
                RepositoryError::LoadFailed { .. } => C::InvalidArgument,
                RepositoryError::Io(_) => C::Internal,
                RepositoryError::Busy(_) => C::Unavailable,
                RepositoryError::Conflict(_) => C::Conflict,
            },
            ApiError::Rollout(e) => match e {
                RolloutError::UnknownModel(_) => C::NotFound,
                RolloutError::VersionNotReady { .. } => C::Conflict,
                RolloutError::NoCandidate(_) => C::Conflict,
                RolloutError::BadRequest(_) => C::InvalidArgument,
            },
            ApiError::Training(e) => {
                use crate::training::jobs::JobError;
                match e {
                    JobError::UnknownModel(_) | JobError::UnknownJob(_) => C::NotFound,
                    JobError::Conflict(_) => C::Conflict,
                    JobError::Busy(_) => C::Unavailable,
                    JobError::Config(_) => C::InvalidArgument,
                }
            }
        }
    }
}

fn route_code(e: &RouteError) -> ErrorCode {
    match e {
        RouteError::UnknownModel(_) | RouteError::UnknownVersion { .. } => ErrorCode::NotFound,
        RouteError::NotReady { .. } => ErrorCode::Unavailable,
    }
}
