//! `POST /v2/models/{m}[/versions/{v}]/infer`: decode, run through `routing`, encode.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::Instrument;

use super::AppState;
use crate::offload::INLINE_LIMIT;
use crate::protocol::{self, InferResponse, ResponseOutput, HEADER_CONTENT_LENGTH};
use crate::service::ApiError;

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
    let mut request = if body.len() > INLINE_LIMIT {
        state
            .offload
            .run(move || protocol::decode_request(body, header_len))
            .await??
    } else {
        protocol::decode_request(body, header_len)?
    };
    // Every inference has an id, so a caller can send feedback for it later: the client's, or
    // one made here (UUID v7: unique, and sortable by time).
    let id = request
        .id
        .get_or_insert_with(|| uuid::Uuid::now_v7().to_string())
        .clone();
    let id_header = http::HeaderValue::from_str(&id).ok();
    // The request's span travels with its job to the engine thread, so every line logged for it
    // carries its id. At debug level only: a span per request costs an allocation when enabled.
    let span = tracing::debug_span!("infer", model, id = %id);
    let result = state
        .router
        .infer(model, version, request, &parts.headers)
        .instrument(span)
        .await?;
    // JSON takes about 12 bytes per element: a response that large is encoded off the runtime,
    // as a request that large is decoded.
    let size: usize = result
        .picked()
        .map(|(_, t, binary)| {
            if binary {
                t.binary_size()
            } else {
                t.len() * 12
            }
        })
        .sum();
    let encode = move || {
        let response = InferResponse {
            model_name: &result.version.model,
            model_version: result.version.version.to_string(),
            id: Some(id.as_str()),
            outputs: result
                .picked()
                .map(|(name, tensor, binary)| ResponseOutput {
                    name,
                    tensor,
                    binary,
                    classes: result.version.io.classes(name).map(|c| c.to_json()),
                })
                .collect(),
        };
        protocol::encode_response(&response)
    };
    let encoded = if size > INLINE_LIMIT {
        state.offload.run(encode).await?
    } else {
        encode()
    };
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
