//! gRPC request messages under the bounds an HTTP body has: the size of one message
//! (`max_body_bytes`), the time it may take to arrive (`body_read_timeout_s`) and the bytes all
//! payloads hold together (the shared [`BodyBudget`]).
//!
//! [`Messages`] sits between the connection and tonic. It reads the gRPC framing itself (a flag
//! byte and a 4-byte length before each message), so a message's length is checked against the
//! limit and counted in the budget before its first byte is buffered; it gathers the message,
//! walks it with [`scan`] (counts checked, the decoded size estimated and counted too), and only
//! then hands it to tonic. tonic therefore never buffers a message that is not admitted, and
//! prost never decodes one. A unary call's body must arrive in full within the body timeout
//! from the call's start; a stream's message within the timeout from its first byte (a stream
//! may stay quiet between messages as long as its client likes).
//!
//! Each admitted message's [`Reservation`] goes into a queue in the request's extensions
//! ([`Held`]); the handler holds it until the message's inference is answered, as an HTTP
//! handler holds its body's.
//!
//! An inference message over `INLINE_LIMIT` is walked and decoded on the blocking pool, as HTTP
//! decodes a large body: the decoded `ModelInferRequest` goes into [`Held`] with its
//! reservation, and tonic gets an empty message in its place (nothing to copy or decode on a
//! runtime worker); the handler takes the decoded one. The body yields nothing else until that
//! decode is done, so messages keep their order.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use parking_lot::Mutex;
use tokio::time::Sleep;
use tonic::Status;

use super::proto;
use super::scan::{self, Kind};
use crate::offload::{Offload, INLINE_LIMIT};
use crate::service::{ApiError, BodyBudget, Reservation};

/// The admitted messages of a call, oldest first, in its request's extensions.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<VecDeque<Admitted>>>);

/// One admitted message: the budget it holds, and the message itself when it was decoded off
/// the runtime (tonic then saw an empty one).
pub struct Admitted {
    pub reservation: Reservation,
    pub decoded: Option<proto::ModelInferRequest>,
}

impl Admitted {
    /// The message to run: the one decoded here, else tonic's.
    pub fn message(&mut self, tonic: proto::ModelInferRequest) -> proto::ModelInferRequest {
        self.decoded.take().unwrap_or(tonic)
    }
}

impl Held {
    /// The oldest admitted message: a handler takes one per message.
    pub fn take(&self) -> Option<Admitted> {
        self.0.lock().pop_front()
    }
}

/// What bounds the messages of one call.
#[derive(Clone)]
pub struct Bounds {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub budget: Arc<BodyBudget>,
    /// Where a large inference message is decoded (the request path's bounded share of the
    /// blocking pool; none free, the call is refused as busy).
    pub offload: Offload,
}

/// The gRPC length prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// A request body whose messages are admitted before tonic sees them.
pub struct Messages<B> {
    inner: B,
    kind: Kind,
    bounds: Bounds,
    held: Held,
    /// Unary calls time the whole body; streams time each message.
    unary: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    current: Option<Partial>,
    /// Admitted messages (prefix and payload) waiting to be handed to tonic.
    ready: VecDeque<Bytes>,
    /// A large inference message being walked and decoded on the blocking pool, and what
    /// arrived after it in the same chunk (taken once it is done, so the order holds).
    decoding: Option<Decoding>,
    leftover: Option<Bytes>,
    trailers: Option<Frame<Bytes>>,
    ended: bool,
}

type Decoded = Result<(Reservation, proto::ModelInferRequest), ApiError>;

/// A large message on the blocking pool (with its reservation, grown there by the decoded size
/// before prost allocates it).
struct Decoding {
    task: Pin<
        Box<dyn std::future::Future<Output = Result<Decoded, crate::offload::OffloadError>> + Send>,
    >,
}

/// A message being received.
struct Partial {
    len: usize,
    /// The payload gathered from several chunks, in a buffer sized once.
    payload: BytesMut,
    /// The payload when one chunk held all of it.
    whole: Option<Bytes>,
    reservation: Reservation,
}

impl<B> Messages<B> {
    pub fn new(inner: B, path: &str, bounds: Bounds, held: Held) -> Messages<B> {
        let kind = Kind::of_path(path);
        let unary = !path.ends_with("/ModelStreamInfer");
        let deadline = unary.then(|| Box::pin(tokio::time::sleep(bounds.timeout)));
        Messages {
            inner,
            kind,
            bounds,
            held,
            unary,
            deadline,
            prefix: [0; PREFIX],
            prefix_len: 0,
            current: None,
            ready: VecDeque::new(),
            decoding: None,
            leftover: None,
            trailers: None,
            ended: false,
        }
    }

    /// Takes one received chunk: completes prefixes and payloads, admitting each message that
    /// completes.
    fn take(&mut self, mut chunk: Bytes) -> Result<(), ApiError> {
        while chunk.has_remaining() {
            if self.decoding.is_some() {
                self.leftover = Some(chunk);
                return Ok(());
            }
            let Some(partial) = &mut self.current else {
                let n = (PREFIX - self.prefix_len).min(chunk.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&chunk[..n]);
                self.prefix_len += n;
                chunk.advance(n);
                if self.prefix_len == PREFIX {
                    self.start()?;
                }
                continue;
            };
            if partial.payload.is_empty() && partial.whole.is_none() && chunk.len() >= partial.len {
                // The whole payload in this chunk: a slice of it, not a copy.
                partial.whole = Some(chunk.split_to(partial.len));
                self.finish()?;
                continue;
            }
            if partial.payload.capacity() == 0 {
                partial.payload.reserve(partial.len);
            }
            let n = (partial.len - partial.payload.len()).min(chunk.len());
            partial.payload.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            if partial.payload.len() == partial.len {
                self.finish()?;
            }
        }
        Ok(())
    }

    /// A message's prefix is in: its length checked and counted before its payload arrives.
    fn start(&mut self) -> Result<(), ApiError> {
        if self.prefix[0] != 0 {
            return Err(ApiError::UnsupportedEncoding(
                "a compressed gRPC message (this server accepts none)".into(),
            ));
        }
        let len = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]) as usize;
        if len > self.bounds.max_bytes {
            return Err(ApiError::BodyTooLarge {
                limit: self.bounds.max_bytes,
            });
        }
        let mut reservation = self.bounds.budget.reservation();
        reservation.grow(PREFIX + len)?;
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.bounds.timeout)));
        }
        self.current = Some(Partial {
            len,
            // Grown to the length (checked against the limit and counted in the budget) only
            // when the payload spans chunks.
            payload: BytesMut::new(),
            whole: None,
            reservation,
        });
        if len == 0 {
            self.finish()?;
        }
        Ok(())
    }

    /// A whole message is in: walked, its decoded size counted, and queued for tonic.
    fn finish(&mut self) -> Result<(), ApiError> {
        let Partial {
            len,
            payload,
            whole,
            mut reservation,
        } = self.current.take().expect("finish follows start");
        let payload = whole.unwrap_or_else(|| payload.freeze());
        self.prefix_len = 0;
        if self.kind == Kind::Infer && len > INLINE_LIMIT {
            let offload = self.bounds.offload.clone();
            let task = Box::pin(async move {
                offload
                    .run(move || -> Decoded {
                        let decoded = scan::check(Kind::Infer, &payload)?;
                        // Counted before prost allocates; the payload stays held (the request's
                        // raw contents are slices of it).
                        reservation.grow(len.saturating_add(decoded))?;
                        let message = <proto::ModelInferRequest as prost::Message>::decode(payload)
                            .map_err(|e| {
                                ApiError::BadRequest(format!("a malformed gRPC message: {e}"))
                            })?;
                        Ok((reservation, message))
                    })
                    .await
            });
            self.decoding = Some(Decoding { task });
            return Ok(());
        }
        let decoded = scan::check(self.kind, &payload)?;
        // tonic copies the message into its own buffer, then prost decodes it.
        reservation.grow(len.saturating_add(decoded))?;
        self.held.0.lock().push_back(Admitted {
            reservation,
            decoded: None,
        });
        self.ready.push_back(Bytes::copy_from_slice(&self.prefix));
        self.ready.push_back(payload);
        self.message_done();
        Ok(())
    }

    fn message_done(&mut self) {
        if !self.unary {
            self.deadline = None;
        }
    }

    /// The large message decoded off the runtime: queued for the handler, and an empty message
    /// for tonic in its place. Pending while the blocking pool works.
    fn poll_decoding(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ApiError>> {
        let Some(decoding) = &mut self.decoding else {
            return Poll::Ready(Ok(()));
        };
        let done = match decoding.task.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        self.decoding = None;
        let (reservation, message) = done??;
        self.held.0.lock().push_back(Admitted {
            reservation,
            decoded: Some(message),
        });
        self.ready.push_back(Bytes::from_static(&[0; PREFIX]));
        self.message_done();
        Poll::Ready(Ok(()))
    }

    fn timed_out(&self) -> ApiError {
        ApiError::BodyTimeout {
            seconds: self.bounds.timeout.as_secs(),
        }
    }

    fn mid_message(&self) -> bool {
        self.current.is_some() || self.prefix_len > 0 || self.leftover.is_some()
    }

    /// Whether nothing is left to hand on.
    fn drained(&self) -> bool {
        self.ready.is_empty() && self.trailers.is_none() && self.decoding.is_none()
    }
}

impl<B> http_body::Body for Messages<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            match this.poll_decoding(cx) {
                Poll::Pending => {
                    return this.waiting(cx);
                }
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(())) => {}
            }
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(chunk) = this.leftover.take() {
                if let Err(e) = this.take(chunk) {
                    return this.fail(e);
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = this.take(data) {
                            return this.fail(e);
                        }
                    }
                    Err(frame) => {
                        if this.mid_message() {
                            return this.fail(ApiError::BadRequest(
                                "the request ended inside a gRPC message".into(),
                            ));
                        }
                        this.trailers = Some(frame);
                        this.ended = true;
                        this.deadline = None;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                Poll::Ready(None) => {
                    if this.mid_message() {
                        return this.fail(ApiError::BadRequest(
                            "the request ended inside a gRPC message".into(),
                        ));
                    }
                    this.ended = true;
                    this.deadline = None;
                }
                Poll::Pending => {
                    return this.waiting(cx);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.drained()
    }
}

impl<B> Messages<B> {
    /// Nothing to hand on yet: pending, unless the body's deadline has passed.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let e = self.timed_out();
                return self.fail(e);
            }
        }
        Poll::Pending
    }

    /// Ends the body with `e` as the call's status; what was gathered is freed at once.
    fn fail(&mut self, e: ApiError) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        tracing::debug!(error = %e, "gRPC message refused");
        self.ended = true;
        self.current = None;
        self.ready.clear();
        self.leftover = None;
        // A decode under way finishes on its own; its result is dropped.
        self.decoding = None;
        self.deadline = None;
        Poll::Ready(Some(Err(e.into_status())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type Item = Result<Frame<Bytes>, std::convert::Infallible>;
    type Sender = mpsc::Sender<Item>;
    type TestBody = Messages<StreamBody<ReceiverStream<Item>>>;

    fn body(
        path: &str,
        max_bytes: usize,
        budget: usize,
        timeout: Duration,
    ) -> (Sender, TestBody, Held, Arc<BodyBudget>) {
        body_with(path, max_bytes, budget, timeout, Offload::new(4))
    }

    fn body_with(
        path: &str,
        max_bytes: usize,
        budget: usize,
        timeout: Duration,
        offload: Offload,
    ) -> (Sender, TestBody, Held, Arc<BodyBudget>) {
        let (tx, rx) = mpsc::channel(16);
        let budget = BodyBudget::new(budget, Metrics::new());
        let held = Held::default();
        let bounds = Bounds {
            max_bytes,
            timeout,
            budget: Arc::clone(&budget),
            offload,
        };
        let messages = Messages::new(
            StreamBody::new(ReceiverStream::new(rx)),
            path,
            bounds,
            held.clone(),
        );
        (tx, messages, held, budget)
    }

    fn frame(message: &[u8], declared: usize) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(declared as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
    const STREAM: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

    #[tokio::test]
    async fn a_message_split_across_chunks_is_admitted_whole_and_held_for_its_handler() {
        let (tx, mut messages, held, budget) =
            body(STREAM, 1 << 20, 1 << 20, Duration::from_secs(5));
        // ModelInferRequest { id: "42" }, then a second one in the same chunk as the end of
        // the first.
        let one = frame(b"\x1a\x0242", 4);
        let wire: Vec<u8> = one.iter().chain(one.iter()).copied().collect();
        for piece in [&wire[..3], &wire[3..7], &wire[7..]] {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                .await
                .unwrap();
        }
        drop(tx);
        let collected = (&mut messages).collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], &wire[..], "passed on unchanged");
        assert_eq!(held.0.lock().len(), 2, "one reservation per message");
        let used = budget.used();
        assert!(used >= 2 * 9, "{used}");
        let first = held.take().unwrap();
        assert!(first.reservation.bytes() >= 9);
        assert!(
            first.decoded.is_none(),
            "a small message is tonic's to decode"
        );
        drop(first);
        drop(held);
        drop(messages);
        assert_eq!(budget.used(), 0, "everything given back");
    }

    /// A large inference message is decoded on the blocking pool and tonic gets an empty one in
    /// its place; a small one after it in the same chunk still comes second.
    #[tokio::test]
    async fn a_large_inference_message_is_decoded_off_the_runtime_in_order() {
        use prost::Message as _;
        let (tx, mut messages, held, budget) =
            body(STREAM, 4 << 20, 16 << 20, Duration::from_secs(5));
        let values = INLINE_LIMIT / 4 + 1;
        let large = proto::ModelInferRequest {
            model_name: "m".into(),
            id: "large".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![values as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(vec![0u8; values * 4])],
            ..Default::default()
        }
        .encode_to_vec();
        let small = frame(b"\x1a\x0242", 4);
        let wire: Vec<u8> = frame(&large, large.len())
            .into_iter()
            .chain(small.iter().copied())
            .collect();
        tx.send(Ok(Frame::data(Bytes::from(wire)))).await.unwrap();
        drop(tx);
        let collected = (&mut messages).collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = [0u8; PREFIX].into_iter().chain(small).collect();
        assert_eq!(
            &collected[..],
            &expected[..],
            "an empty message, then the small one"
        );
        let mut first = held.take().unwrap();
        let decoded = first.message(proto::ModelInferRequest::default());
        assert_eq!(
            (decoded.id.as_str(), decoded.raw_input_contents[0].len()),
            ("large", values * 4)
        );
        assert!(first.reservation.bytes() >= large.len());
        assert!(held.take().unwrap().decoded.is_none());
        drop((first, decoded, held, messages));
        assert_eq!(budget.used(), 0, "everything given back");
    }

    /// A large inference message's decoded size is counted in the budget too (on the blocking
    /// pool, before prost decodes it): with room for the payload but not for what it decodes
    /// to, the call is refused as busy and everything is given back.
    #[tokio::test]
    async fn a_large_message_is_counted_whole_before_it_is_decoded() {
        use prost::Message as _;
        let values = INLINE_LIMIT / 4 + 1;
        let large = proto::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![values as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(vec![0u8; values * 4])],
            ..Default::default()
        }
        .encode_to_vec();
        let room = large.len() + PREFIX + 16;
        let (tx, mut messages, held, budget) = body(STREAM, 4 << 20, room, Duration::from_secs(5));
        tx.send(Ok(Frame::data(Bytes::from(frame(&large, large.len())))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        assert!(held.take().is_none(), "nothing admitted");
        drop(messages);
        assert_eq!(budget.used(), 0, "everything given back");
    }

    /// The decode of a large inference message needs a slot of the request path's share of
    /// the blocking pool: with none free the call is refused as busy, never decoded inline.
    #[tokio::test]
    async fn a_large_inference_message_waits_for_no_runtime_worker() {
        let offload = Offload::new(1);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        assert!(offload.try_spawn(move || {
            let _ = hold.recv();
        }));
        let (tx, mut messages, _held, _) =
            body_with(STREAM, 4 << 20, 16 << 20, Duration::from_secs(5), offload);
        let payload = vec![0u8; INLINE_LIMIT + 1];
        tx.send(Ok(Frame::data(Bytes::from(frame(&payload, payload.len())))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        drop(release);
    }

    #[tokio::test]
    async fn a_length_over_the_limit_or_the_budget_is_refused_before_its_payload() {
        let (tx, mut messages, _held, budget) = body(INFER, 1000, 1 << 20, Duration::from_secs(5));
        tx.send(Ok(Frame::data(Bytes::from(frame(b"", 1001)))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert_eq!(budget.used(), 0);

        let (tx, mut messages, _held, _) = body(INFER, 1 << 20, 4096, Duration::from_secs(5));
        tx.send(Ok(Frame::data(Bytes::from(frame(b"", 8192)))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    }

    #[tokio::test]
    async fn a_refused_walk_is_an_invalid_argument() {
        let (tx, mut messages, held, budget) =
            body(INFER, 1 << 20, 1 << 20, Duration::from_secs(5));
        let empty_inputs = b"\x2a\x00".repeat(2000);
        tx.send(Ok(Frame::data(Bytes::from(frame(&empty_inputs, 4000)))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(held.0.lock().is_empty());
        assert_eq!(budget.used(), 0, "a refused message holds nothing");
    }

    #[tokio::test]
    async fn a_stalled_unary_body_times_out_and_a_quiet_stream_does_not() {
        let timeout = Duration::from_millis(300);
        let (tx, mut messages, _held, budget) = body(INFER, 1 << 20, 1 << 20, timeout);
        tx.send(Ok(Frame::data(Bytes::from(frame(b"\x1a", 100)))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
        assert_eq!(budget.used(), 0);
        drop(tx);

        let (tx, mut messages, _held, _) = body(STREAM, 1 << 20, 1 << 20, timeout);
        let waited = tokio::time::timeout(4 * timeout, messages.frame()).await;
        assert!(waited.is_err(), "a stream may be quiet between messages");
        tx.send(Ok(Frame::data(Bytes::from(frame(b"\x1a", 100)))))
            .await
            .unwrap();
        let e = messages.frame().await.unwrap().unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::DeadlineExceeded,
            "but a message must arrive within the timeout of its first byte"
        );
    }
}
