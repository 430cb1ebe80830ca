//! `POST /v2/models/{m}[/versions/{v}]/infer`: the body read under its limits, then the service
//! layer's one inference path with V2's codec (JSON and binary tensors), and the answer's headers.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::AppState;
use crate::protocol::{
    self, EncodedResponse, InferResponse, ResponseOutput, HEADER_CONTENT_LENGTH,
};
use crate::request::InferRequest;
use crate::routing::InferResult;
use crate::service::{self, ApiError, InferCodec};

/// The response header that carries the request's id (also in the body's `id`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub async fn infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, incoming) = req.into_parts();
    let header_len = match parts.headers.get(HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    protocol::ProtocolError::BadHeaderLength(
                        String::from_utf8_lossy(v.as_bytes()).into(),
                    )
                })?,
        ),
    };
    // The reservation lives to the end of the handler: binary tensors are slices of the body.
    let super::body::ReadBody {
        bytes: body,
        reservation: _held,
    } = state.read_body(&parts, incoming).await?;
    let size = body.len();
    let (encoded, id) = service::infer::<Rest>(
        state,
        model,
        version,
        &parts.headers,
        (body, header_len),
        size,
    )
    .await?;
    let id_header = http::HeaderValue::from_str(&id).ok();
    let mut builder = Response::builder().status(StatusCode::OK);
    if let Some(value) = id_header {
        builder = builder.header(REQUEST_ID_HEADER, value);
    }
    builder = match encoded.header_len {
        Some(len) => builder
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(HEADER_CONTENT_LENGTH, len),
        None => builder.header(header::CONTENT_TYPE, "application/json"),
    };
    Ok(builder
        .body(Full::new(Bytes::from(encoded.body)))
        .expect("headers are valid"))
}

/// V2's JSON with the binary tensor extension: the body and its `Inference-Header-Content-Length`.
struct Rest;

impl InferCodec for Rest {
    type Payload = (Bytes, Option<usize>);
    type Answer = (EncodedResponse, String);

    fn decode((body, header_len): Self::Payload) -> Result<InferRequest, ApiError> {
        Ok(protocol::decode_request(body, header_len)?)
    }

    /// JSON takes about 12 bytes per element.
    fn answer_size(result: &InferResult) -> usize {
        (result.picked())
            .map(|(_, t, binary)| {
                if binary {
                    t.binary_size()
                } else {
                    t.len() * 12
                }
            })
            .sum()
    }

    fn encode(result: InferResult, id: String) -> Result<Self::Answer, ApiError> {
        let response = InferResponse {
            model_name: &result.version.model,
            model_version: result.version.version.to_string(),
            id: Some(id.as_str()),
            outputs: (result.picked())
                .map(|(name, tensor, binary)| ResponseOutput {
                    name,
                    tensor,
                    binary,
                    classes: result.version.io.classes(name).map(|c| c.to_json()),
                })
                .collect(),
        };
        let encoded = protocol::encode_response(&response);
        Ok((encoded, id))
    }
}
