//! The inference request as the serving layers see it, free of any wire format: `protocol`
//! builds it from a V2 body (and another front end could build it from another wire), `routing`
//! and `model` consume it. Nothing here knows JSON or HTTP.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::tensor::Tensor;

/// The longest request id accepted, in bytes, on every front end. An id travels into the
/// response body, the `x-request-id` header, the prediction log and the feedback index; a longer
/// one is refused (400 / INVALID_ARGUMENT), never truncated, so the id a client sent is the id it
/// gets back and the one its feedback must name.
pub const MAX_ID_BYTES: usize = 1024;

/// One inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    /// Request-level parameters the decoder did not consume itself.
    pub parameters: Parameters,
    pub inputs: RequestInputs,
    /// The outputs asked for; empty means every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// Whether outputs not named in `outputs` come back in binary form.
    pub binary_output: bool,
    /// The request's own queue timeout, in microseconds.
    pub timeout_us: Option<u64>,
}

/// Inputs as they arrived.
#[derive(Debug)]
pub enum RequestInputs {
    Named(Vec<NamedTensor>),
    /// One input's raw bytes, whose name, datatype and shape only the model can tell.
    Raw(Bytes),
}

#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    /// Whether this output comes back in binary form; `None` follows the request's
    /// `binary_output`.
    pub binary: Option<bool>,
}

/// Named scalar parameters.
pub type Parameters = BTreeMap<String, Parameter>;

/// A parameter value: the protocol allows strings, numbers and booleans only.
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    String(String),
    Null,
}

impl Parameter {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Parameter::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Parameter::Uint(v) => Some(*v),
            Parameter::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Parameter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parameter::Bool(b) => write!(f, "{b}"),
            Parameter::Int(v) => write!(f, "{v}"),
            Parameter::Uint(v) => write!(f, "{v}"),
            Parameter::Float(v) => write!(f, "{v}"),
            Parameter::String(s) => write!(f, "{s:?}"),
            Parameter::Null => f.write_str("null"),
        }
    }
}
