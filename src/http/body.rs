//! Reading request bodies under the size limit, decompressing `gzip` and `deflate` bodies
//! (tritonclient's `request_compression_algorithm`), also under the limit.

use std::io::Read;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::error::ApiError;

/// Reads the whole body, refusing more than `limit` bytes before or after decompression.
pub async fn read(parts: &Parts, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    let raw = collected.to_bytes();
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") => inflate(flate2::read::GzDecoder::new(&raw[..]), limit),
        Some("deflate") => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit),
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_string())),
    }
}

fn inflate(decoder: impl Read, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("cannot decompress the request body: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Bytes::from(out))
}
