//! The one inference path every front end takes, whatever its wire: the payload (already
//! admitted under the body budget by the front end that read it) is decoded, the request gets
//! its id, its span is opened (the batch job carries it to the engine thread), it runs through
//! `routing`, and the result is encoded. A payload or answer over [`INLINE_LIMIT`] is decoded
//! or encoded on the blocking pool, never on a runtime worker. A front end supplies only the
//! codec; a test can supply its own and call this in process.

use tracing::Instrument;

use super::{ApiError, AppState};
use crate::offload::INLINE_LIMIT;
use crate::request::InferRequest;
use crate::routing::{InferResult, RequestKeys};

/// How a front end's payload becomes a request and a result its answer.
pub trait InferCodec: 'static {
    type Payload: Send + 'static;
    type Answer: Send + 'static;
    fn decode(payload: Self::Payload) -> Result<InferRequest, ApiError>;
    /// About the size of the encoded answer, to decide where it is encoded.
    fn answer_size(result: &InferResult) -> usize;
    /// `id` is the request's: the client's, or the one made for it.
    fn encode(result: InferResult, id: String) -> Result<Self::Answer, ApiError>;
}

/// One inference. `size` is the payload's admitted size, which decides where it is decoded.
pub async fn infer<C: InferCodec>(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    keys: &(dyn RequestKeys + Sync),
    payload: C::Payload,
    size: usize,
) -> Result<C::Answer, ApiError> {
    let mut request = if size > INLINE_LIMIT {
        state.offload.run(move || C::decode(payload)).await??
    } else {
        C::decode(payload)?
    };
    // Every inference has an id, so a caller can send feedback for it later: the client's, or
    // one made here (UUID v7: unique, and sortable by time).
    let id = request
        .id
        .get_or_insert_with(|| uuid::Uuid::now_v7().to_string())
        .clone();
    // At debug level only: a span per request costs an allocation when enabled.
    let span = tracing::debug_span!("infer", model, id = %id);
    let result = state
        .router
        .infer(model, version, request, keys)
        .instrument(span)
        .await?;
    if C::answer_size(&result) > INLINE_LIMIT {
        state.offload.run(move || C::encode(result, id)).await?
    } else {
        C::encode(result, id)
    }
}
