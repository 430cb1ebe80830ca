//! Reading request bodies under three bounds: the size of one body (`max_body_bytes`, before and
//! after decompression), the time it may take to arrive (`body_read_timeout_s`) and the bytes
//! held by all bodies together (`max_buffered_body_bytes`, a [`BodyBudget`]). A body that would
//! pass the shared bound is refused at once with 503 instead of waiting, so stalled uploads can
//! never pile up memory. The same budget counts the answers a connection has produced and not
//! yet written to its client (`listener::answers`): what a slow reader holds is held from the same
//! bound as what a slow writer does. `gzip` and `deflate` bodies (tritonclient's
//! `request_compression_algorithm`) are inflated on the blocking pool, never on a runtime worker.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::BodyExt;

use crate::offload::Offload;
use crate::service::{ApiError, BodyBudget, Reservation};

/// What bounds one body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// A body and the share of the budget that counts it: keep the reservation as long as the bytes
/// (or tensors sliced from them) live.
pub struct ReadBody {
    pub bytes: Bytes,
    pub reservation: Reservation,
}

/// Reads the whole body under `limits`, counting it in `budget`, and inflates it if it is
/// compressed.
pub async fn read<B>(
    parts: &Parts,
    body: B,
    limits: BodyLimits,
    budget: &Arc<BodyBudget>,
    offload: &Offload,
) -> Result<ReadBody, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let limit = limits.max_bytes;
    let declared = match parts.headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(len) if len > limit as u64 => return Err(ApiError::BodyTooLarge { limit }),
            Some(len) => Some(len as usize),
            None => {
                return Err(ApiError::BadRequest(
                    "Content-Length is not a number".into(),
                ))
            }
        },
    };
    let mut reservation = budget.reservation();
    if let Some(len) = declared {
        // Counted before a byte is read, so a client that stalls holds no more than it declared.
        reservation.grow(len)?;
    }
    let raw = match tokio::time::timeout(
        limits.timeout,
        collect(body, declared, limit, &mut reservation),
    )
    .await
    {
        Ok(collected) => collected?,
        Err(_) => {
            return Err(ApiError::BodyTimeout {
                seconds: limits.timeout.as_secs(),
            })
        }
    };
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let zlib = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            return Ok(ReadBody {
                bytes: raw,
                reservation,
            })
        }
        Some("gzip") => false,
        Some("deflate") => true,
        Some(other) => return Err(ApiError::UnsupportedEncoding(other.to_string())),
    };
    // The inflated bytes are counted in a share of their own; the compressed ones are given back
    // once inflated.
    let mut inflated = budget.reservation();
    let (bytes, inflated) = offload
        .run(move || {
            let result = if zlib {
                inflate(
                    flate2::read::ZlibDecoder::new(&raw[..]),
                    limit,
                    &mut inflated,
                )
            } else {
                inflate(flate2::read::GzDecoder::new(&raw[..]), limit, &mut inflated)
            };
            result.map(|bytes| (bytes, inflated))
        })
        .await??;
    drop(reservation);
    Ok(ReadBody {
        bytes,
        reservation: inflated,
    })
}

/// Gathers the body's frames. With a declared length the buffer is sized once (the length was
/// checked against the limit and counted in the budget); without one, each frame is counted as
/// it arrives. A body that arrives as one frame is passed on without a copy.
async fn collect<B>(
    mut body: B,
    declared: Option<usize>,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut first: Option<Bytes> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        match declared {
            Some(len) if total > len => {
                return Err(ApiError::BadRequest(
                    "the request body is longer than its Content-Length".into(),
                ))
            }
            Some(_) => {}
            None => reservation.grow(chunk.len())?,
        }
        match first.take() {
            None if buffer.is_empty() => first = Some(chunk),
            None => buffer.extend_from_slice(&chunk),
            Some(head) => {
                buffer.reserve_exact(declared.map_or(head.len() + chunk.len(), |len| len));
                buffer.extend_from_slice(&head);
                buffer.extend_from_slice(&chunk);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(buffer),
    })
}

/// Inflates on the calling (blocking-pool) thread, counting every chunk in `reservation`.
fn inflate(
    mut decoder: impl Read,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, ApiError> {
    let mut scratch = vec![0u8; 64 << 10];
    let mut out = Vec::new();
    loop {
        let n = decoder.read(&mut scratch).map_err(|e| {
            ApiError::BadRequest(format!("cannot decompress the request body: {e}"))
        })?;
        if n == 0 {
            break;
        }
        if out.len() + n > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        reservation.grow(n)?;
        out.extend_from_slice(&scratch[..n]);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use http_body_util::Full;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn limits(max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(5),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[tokio::test]
    async fn the_budget_is_taken_before_reading_and_given_back() {
        let budget = BodyBudget::new(1000, Metrics::new());
        let held = read(
            &parts(&[("content-length", "600")]),
            Full::new(Bytes::from(vec![1u8; 600])),
            limits(800),
            &budget,
            &Offload::new(4),
        )
        .await
        .unwrap();
        assert_eq!(held.bytes.len(), 600);
        assert_eq!(budget.used(), 600);
        let err = read(
            &parts(&[("content-length", "600")]),
            Full::new(Bytes::from(vec![1u8; 600])),
            limits(800),
            &budget,
            &Offload::new(4),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ApiError::Busy(_)), "{err}");
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn chunked_bodies_are_counted_as_they_arrive() {
        let budget = BodyBudget::new(1000, Metrics::new());
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, String>::new(16);
        for _ in 0..10 {
            tx.send_data(Bytes::from(vec![0u8; 150])).await.unwrap();
        }
        drop(tx);
        let err = read(&parts(&[]), body, limits(10_000), &budget, &Offload::new(4))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ApiError::Busy(_)), "{err}");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_gzip_bomb_stops_at_the_limit() {
        let budget = BodyBudget::new(64 << 20, Metrics::new());
        let bomb = gzip(&vec![0u8; 8 << 20]);
        let err = read(
            &parts(&[("content-encoding", "gzip")]),
            Full::new(Bytes::from(bomb.clone())),
            limits(1 << 20),
            &budget,
            &Offload::new(4),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ApiError::BodyTooLarge { .. }), "{err}");
        assert_eq!(budget.used(), 0);
        let ok = read(
            &parts(&[("content-encoding", "gzip")]),
            Full::new(Bytes::from(bomb)),
            limits(16 << 20),
            &budget,
            &Offload::new(4),
        )
        .await
        .unwrap();
        assert_eq!(ok.bytes.len(), 8 << 20);
        assert!(budget.used() >= 8 << 20);
    }

    /// Inflating must yield the runtime thread: on a single-threaded runtime, a task spawned
    /// before the read can only run during the read if the inflation happens elsewhere.
    #[tokio::test(flavor = "current_thread")]
    async fn inflation_runs_off_the_runtime_thread() {
        let budget = BodyBudget::new(64 << 20, Metrics::new());
        let bomb = Bytes::from(gzip(&vec![0u8; 32 << 20]));
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&ran);
        let other = tokio::spawn(async move {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let body = read(
            &parts(&[("content-encoding", "gzip")]),
            Full::new(bomb),
            limits(48 << 20),
            &budget,
            &Offload::new(4),
        )
        .await
        .unwrap();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "another task ran while the body was inflated"
        );
        assert_eq!(body.bytes.len(), 32 << 20);
        other.await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_frees_its_share() {
        let budget = BodyBudget::new(1 << 20, Metrics::new());
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, String>::new(4);
        tx.send_data(Bytes::from(vec![0u8; 100])).await.unwrap();
        let err = read(
            &parts(&[("content-length", "1000")]),
            body,
            BodyLimits {
                max_bytes: 1 << 20,
                timeout: Duration::from_millis(50),
            },
            &budget,
            &Offload::new(4),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, ApiError::BodyTimeout { .. }), "{err}");
        assert_eq!(budget.used(), 0);
        drop(tx);
    }
}
