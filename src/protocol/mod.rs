//! The KServe V2 / Open Inference Protocol wire format: JSON bodies and the binary tensor data
//! extension, in both directions.
//!
//! Wire types stop here: `decode_request` turns a body into a [`crate::request::InferRequest`]
//! of our own tensors, and `encode_response` turns an [`InferResponse`] back into bytes. Nothing in this
//! module knows a model; checking a request against a model's inputs belongs to `routing`.

mod bounded;
mod data;
mod feedback;
mod request;
mod response;

use crate::tensor::{Tensor, TensorError};

pub use data::parse_binary_bytes;
pub use feedback::{decode_feedback, MAX_FEEDBACK_ROWS, MAX_LABEL_BYTES, MAX_TIME_AHEAD_S};
pub use request::decode_request;

/// What one request may hold, whatever its wire (the gRPC service checks the same bounds).
pub mod limits {
    pub use super::bounded::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};
}
pub use response::{encode_response, write_binary, EncodedResponse};

/// The header that carries the length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A response ready to encode.
#[derive(Debug)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: String,
    pub id: Option<&'a str>,
    pub outputs: Vec<ResponseOutput<'a>>,
}

/// One output to encode, borrowed from the inference result (no copy per request).
#[derive(Debug)]
pub struct ResponseOutput<'a> {
    pub name: &'a str,
    pub tensor: &'a Tensor,
    pub binary: bool,
    /// The output's classes as a JSON array (a classifier's ZipMap output), sent as the
    /// output's `classes` parameter.
    pub classes: Option<String>,
}

/// Why a body is not a valid V2 request (or feedback body). Every variant is the client's fault
/// (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A feedback body; the message names the item and the field.
    #[error("{0}")]
    Feedback(String),
    #[error("malformed request JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("request body is not UTF-8 JSON: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderLength { header: usize, body: usize },
    #[error("Inference-Header-Content-Length must be a non-negative integer, got {0:?}")]
    BadHeaderLength(String),
    #[error("input '{input}': unknown datatype '{datatype}'")]
    UnknownDatatype { input: String, datatype: String },
    #[error("input '{input}': shape dimension {dim} is negative")]
    NegativeDim { input: String, dim: i64 },
    #[error("input '{input}': {reason}")]
    Data { input: String, reason: String },
    #[error("input '{input}': {source}")]
    Tensor {
        input: String,
        #[source]
        source: TensorError,
    },
    #[error("input '{input}': has neither 'data' nor a 'binary_data_size' parameter")]
    NoData { input: String },
    #[error("input '{input}': has both 'data' and a 'binary_data_size' parameter")]
    DataAndBinary { input: String },
    #[error("input '{input}': binary_data_size {size} runs past the end of the body")]
    BinaryOverrun { input: String, size: usize },
    #[error("the binary part of the body has {0} bytes that no input claims")]
    BinaryTrailing(usize),
    #[error("input '{0}' is given more than once")]
    DuplicateInput(String),
    #[error("output '{0}' is requested more than once")]
    DuplicateOutput(String),
    #[error("parameter '{name}': {reason}")]
    Parameter { name: String, reason: String },
    #[error("output '{0}': the classification extension is not supported")]
    Classification(String),
    #[error("request has no inputs")]
    NoInputs,
    #[error("raw_input_contents has {raw} entries for {inputs} inputs; it needs one per input")]
    RawInputCount { raw: usize, inputs: usize },
    #[error("request has more {what} than the limit of {limit}")]
    TooMany { what: &'static str, limit: usize },
    #[error("the request id has {bytes} bytes, more than the limit of {limit}")]
    IdTooLong { bytes: usize, limit: usize },
}

/// Refuses a request id longer than [`crate::request::MAX_ID_BYTES`]: one rule for every front
/// end, so the id echoed in the body and in `x-request-id` is always the id sent, whole.
pub fn check_id(id: &str) -> Result<(), ProtocolError> {
    let limit = crate::request::MAX_ID_BYTES;
    if id.len() > limit {
        return Err(ProtocolError::IdTooLong {
            bytes: id.len(),
            limit,
        });
    }
    Ok(())
}
