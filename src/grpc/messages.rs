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

use super::scan::{self, Kind};
use crate::service::{ApiError, BodyBudget, Reservation};

/// The reservations of a call's admitted messages, oldest first, in its request's extensions.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<VecDeque<Reservation>>>);

impl Held {
    /// The oldest admitted message's reservation: a stream's handler takes one per message.
    pub fn take(&self) -> Option<Reservation> {
        self.0.lock().pop_front()
    }

    /// Bytes held for the messages not yet taken.
    pub fn bytes(&self) -> usize {
        self.0.lock().iter().map(Reservation::bytes).sum()
    }
}

/// What bounds the messages of one call.
#[derive(Clone)]
pub struct Bounds {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub budget: Arc<BodyBudget>,
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
    trailers: Option<Frame<Bytes>>,
    ended: bool,
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
            trailers: None,
            ended: false,
        }
    }

    /// Takes one received chunk: completes prefixes and payloads, admitting each message that
    /// completes.
    fn take(&mut self, mut chunk: Bytes) -> Result<(), ApiError> {
        while chunk.has_remaining() {
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
        let decoded = scan::check(self.kind, &payload)?;
        // tonic copies the message into its own buffer, then prost decodes it.
        reservation.grow(len.saturating_add(decoded))?;
        self.held.0.lock().push_back(reservation);
        self.ready.push_back(Bytes::copy_from_slice(&self.prefix));
        self.ready.push_back(payload);
        self.prefix_len = 0;
        if !self.unary {
            self.deadline = None;
        }
        Ok(())
    }

    fn timed_out(&self) -> ApiError {
        ApiError::BodyTimeout {
            seconds: self.bounds.timeout.as_secs(),
        }
    }

    fn mid_message(&self) -> bool {
        self.current.is_some() || self.prefix_len > 0
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
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
            if this.ended {
                return Poll::Ready(None);
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
                    if let Some(deadline) = &mut this.deadline {
                        if deadline.as_mut().poll(cx).is_ready() {
                            let e = this.timed_out();
                            return this.fail(e);
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty() && self.trailers.is_none()
    }
}

impl<B> Messages<B> {
    /// Ends the body with `e` as the call's status; what was gathered is freed at once.
    fn fail(&mut self, e: ApiError) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        tracing::debug!(error = %e, "gRPC message refused");
        self.ended = true;
        self.current = None;
        self.ready.clear();
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
        let (tx, rx) = mpsc::channel(16);
        let budget = BodyBudget::new(budget, Metrics::new());
        let held = Held::default();
        let bounds = Bounds {
            max_bytes,
            timeout,
            budget: Arc::clone(&budget),
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
        assert!(first.bytes() >= 9);
        drop(first);
        drop(held);
        drop(messages);
        assert_eq!(budget.used(), 0, "everything given back");
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
