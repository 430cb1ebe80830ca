//! The one place where errors become gRPC statuses: each [`ErrorCode`] mapped once (gRPC's
//! guidance for HTTP statuses, and Triton's choices), with the message an HTTP client reads.

use tonic::Code;

use crate::service::{ApiError, ErrorCode};

/// The gRPC status code of each error code.
pub fn code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::Unready | ErrorCode::UnsupportedEncoding => {
            Code::InvalidArgument
        }
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::Conflict => Code::FailedPrecondition,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::TooLarge => Code::ResourceExhausted,
        ErrorCode::PayloadTimeout | ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::MethodNotAllowed => Code::Unimplemented,
        ErrorCode::Internal => Code::Internal,
    }
}

impl ApiError {
    /// The error's gRPC status code.
    pub fn grpc_code(&self) -> Code {
        code(self.code())
    }

    /// The error as a gRPC status: its code and the same message an HTTP client reads.
    pub fn into_status(self) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), self.to_string())
    }
}
