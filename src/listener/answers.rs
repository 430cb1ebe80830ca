//! Admission of every request on every listener, and the count of answers a client has not
//! read.
//!
//! An answer is memory the server holds until the client reads it: an HTTP/2 client that opens
//! many streams and never reads could otherwise keep gigabytes for a few bytes sent each.
//! [`Counted`] counts an answer's bytes against its connection (and the shared payload budget)
//! from the moment the answer exists, and the connection's socket gives them back as it writes
//! them (`conn::Watched`); a body dropped unsent gives back what it never handed over.
//! [`Admitted`] wraps each listener's service and decides, before a request runs:
//! - a connection holding more than its share of unread answers gets 503 (gRPC: UNAVAILABLE)
//!   until its client reads them;
//! - when the shared budget is spent, or unread answers hold half of it, a connection may run
//!   one request at a time and only with nothing unread, so every connection can still be
//!   answered (a health probe, say) while the memory held grows by at most one answer per
//!   connection, and request bodies keep at least half the budget.
//!
//! A client that reads nothing for `body_read_timeout_s` while answers wait is disconnected by
//! the connection's watchdog, which gives everything back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{Activity, InFlight};
use crate::metrics::Metrics;
use crate::service::{ApiError, BodyBudget};

/// The most unread answer bytes one connection may hold before its next request is refused: a
/// sixteenth of the shared budget (at least 1 MiB), so a few slow readers cannot take it all.
pub fn connection_share(budget: &BodyBudget) -> usize {
    (budget.limit() / 16).max(1 << 20)
}

/// Why a request may not run now, if it may not.
pub fn admit(activity: &Activity, budget: &BodyBudget, share: usize) -> Result<(), Refusal> {
    let unread = activity.unread();
    if unread > share {
        return Err(Refusal::Connection { unread, share });
    }
    // This request is already counted in flight.
    if budget.spent() && (unread > 0 || activity.in_flight() > 1) {
        return Err(Refusal::Budget {
            limit: budget.limit(),
        });
    }
    Ok(())
}

/// A request refused at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Connection { unread: usize, share: usize },
    Budget { limit: usize },
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Connection { .. } => "connection",
            Refusal::Budget { .. } => "budget",
        }
    }

    fn into_error(self) -> ApiError {
        ApiError::Busy(match self {
            Refusal::Connection { unread, share } => format!(
                "this connection holds {unread} bytes of answers its client has not read (at \
                 most {share}); read them, or retry on another connection"
            ),
            Refusal::Budget { limit } => format!(
                "the server holds its limit of {limit} bytes of request bodies and unread answers \
                 (max_buffered_body_bytes); retry later"
            ),
        })
    }
}

/// A listener's service behind admission, its answers counted.
pub struct Admitted<S, B> {
    pub inner: S,
    pub activity: Arc<Activity>,
    pub budget: Arc<BodyBudget>,
    pub metrics: Metrics,
    pub listener: &'static str,
    /// The listener's own form of a refusal (a JSON 503, a gRPC status).
    pub refuse: fn(ApiError) -> Response<B>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Admitted<S, B>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<Counted<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin(req.version());
        let share = connection_share(&self.budget);
        if let Err(refusal) = admit(&self.activity, &self.budget, share) {
            self.metrics
                .record_request_refused(self.listener, refusal.reason());
            tracing::debug!(?refusal, "request refused at admission");
            let response = (self.refuse)(refusal.into_error());
            let activity = Arc::clone(&self.activity);
            return Box::pin(std::future::ready(Ok(
                response.map(|body| Counted::new(body, activity, in_flight))
            )));
        }
        let answer = self.inner.call(req);
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Counted::new(body, activity, in_flight)))
        })
    }
}

/// An answer's body, counted as unread from the moment it exists until the connection writes
/// it. A body of known size is counted whole at once; a streamed one (gRPC) frame by frame as
/// it is produced. The request stays in flight until its body is done, so a streaming answer
/// keeps its connection busy.
pub struct Counted<B> {
    inner: B,
    activity: Arc<Activity>,
    /// Bytes counted up front and not yet handed to the connection.
    ahead: usize,
    _in_flight: InFlight,
}

impl<B: Body> Counted<B> {
    fn new(inner: B, activity: Arc<Activity>, in_flight: InFlight) -> Counted<B> {
        let ahead = inner
            .size_hint()
            .exact()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        activity.produced(ahead);
        Counted {
            inner,
            activity,
            ahead,
            _in_flight: in_flight,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.remaining();
                let counted = n.min(this.ahead);
                this.ahead -= counted;
                this.activity.produced(n - counted);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    /// What was counted and never handed over (a HEAD answer, a cancelled stream) will never be
    /// written.
    fn drop(&mut self) {
        self.activity.unproduced(self.ahead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_over_its_share_is_refused_and_a_spent_budget_allows_one_at_a_time() {
        let budget = BodyBudget::new(64 << 20, Metrics::new());
        let activity = Arc::new(Activity::for_test(Arc::clone(&budget)));
        let share = connection_share(&budget);
        assert_eq!(share, 4 << 20);
        let first = activity.begin(http::Version::HTTP_2);
        assert_eq!(admit(&activity, &budget, share), Ok(()));
        activity.produced(share + 1);
        assert!(matches!(
            admit(&activity, &budget, share),
            Err(Refusal::Connection { .. })
        ));
        activity.unproduced(share + 1);
        assert_eq!(activity.unread(), 0);
        assert_eq!(budget.used(), 0);

        // Another connection's unread answers reach half the budget: that is spent for new
        // answers, and request bodies keep the other half.
        let other = Arc::new(Activity::for_test(Arc::clone(&budget)));
        other.produced(32 << 20);
        assert!(budget.spent());
        let mut body = budget.reservation();
        assert!(body.grow(16 << 20).is_ok(), "bodies keep the other half");
        drop(body);
        assert_eq!(
            admit(&activity, &budget, share),
            Ok(()),
            "alone and with nothing unread, a request still runs"
        );
        let second = activity.begin(http::Version::HTTP_2);
        assert!(matches!(
            admit(&activity, &budget, share),
            Err(Refusal::Budget { .. })
        ));
        drop((first, second));
        drop(other);
        assert_eq!(
            budget.used(),
            0,
            "a closed connection gives back what it held"
        );
    }

    #[tokio::test]
    async fn an_answer_is_counted_until_handed_over_and_a_dropped_one_gives_back() {
        use http_body_util::{BodyExt, Full};
        let budget = BodyBudget::new(1 << 20, Metrics::new());
        let activity = Arc::new(Activity::for_test(Arc::clone(&budget)));
        let body = Counted::new(
            Full::new(bytes::Bytes::from(vec![0u8; 1000])),
            Arc::clone(&activity),
            activity.begin(http::Version::HTTP_11),
        );
        assert_eq!(activity.unread(), 1000);
        assert_eq!(activity.in_flight(), 1, "in flight until its body is done");
        drop(body);
        assert_eq!(activity.unread(), 0, "never sent, never to be written");
        assert_eq!(activity.in_flight(), 0);

        let body = Counted::new(
            Full::new(bytes::Bytes::from(vec![0u8; 1000])),
            Arc::clone(&activity),
            activity.begin(http::Version::HTTP_11),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 1000);
        assert_eq!(
            activity.unread(),
            1000,
            "handed over: held until the socket writes it"
        );
        activity.unproduced(1000);
        assert_eq!(budget.used(), 0);
    }
}
