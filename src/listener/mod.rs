//! The accept loop both front ends share (the V2 REST API's HTTP/1.1 and h2c port, the gRPC
//! port): connections accepted under a limit, closed when idle or never finishing their headers, and
//! drained on shutdown without dropping a request that is already on the wire.
//!
//! Each connection runs on its own task beside a watchdog that samples its [`Activity`] (requests
//! in flight and started, bytes read and written, answers unread) a few times per timeout:
//! - a connection with no request in flight and none started for a whole window is closed: the
//!   window is `header_read_timeout` until the first request head has arrived (so a client that
//!   sends only part of its headers, or nothing, is dropped) and `keep_alive_timeout` after;
//! - an HTTP/1.1 head whose first bytes arrived between keep-alive requests must complete
//!   within `header_read_timeout` of them too;
//! - a connection whose client reads none of its waiting answers for `body_read_timeout` is
//!   dropped, whatever is in flight (`answers` counts what waits).
//!
//! An HTTP/1.1 connection with nothing in flight is dropped rather than closed gracefully: a
//! graceful close would wait for a half-sent head. The request path pays a few relaxed atomic
//! operations per request and per socket read or write.
//!
//! On shutdown the listener closes at once. HTTP/2 connections get a GOAWAY. HTTP/1.1
//! connections keep being served, every response now carrying `Connection: close`, and are
//! closed only once they have been idle for a short drain window: a request a client wrote at
//! the moment of the signal is answered, never cut off.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::throttle::Throttle;
use crate::tls::Tls;

mod answers;

use crate::service::{ApiError, AppState, BodyBudget};

/// The largest request head (request line and headers) a client may send, and the most bytes
/// hyper buffers per connection while reading one. Bounds what a connection that never finishes
/// its headers can hold: `max_connections` × this.
pub const MAX_HEAD_BYTES: usize = 128 << 10;

/// Concurrent HTTP/2 streams per connection (gRPC calls included): enough for any client's
/// concurrency, few enough that the answers one connection can have in the making stay small
/// beside the payload budget.
pub const MAX_STREAMS: u32 = 128;

/// File descriptors kept for everything but client connections (model files, the state file,
/// load-check pipes, the runtime itself).
const RESERVED_FDS: u64 = 64;

/// While draining, an HTTP/1.1 connection idle for this many ticks of [`DRAIN_TICK`] is closed.
const DRAIN_TICK: Duration = Duration::from_millis(250);
const DRAIN_IDLE_TICKS: u32 = 2;
/// Ticks per idle window outside shutdown.
const TICKS_PER_WINDOW: u32 = 4;
/// At most one log line per this period for refused connections and accept errors.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// What the service, the socket and the watchdog of one connection share.
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    http2: AtomicBool,
    /// Bytes read from and written to the socket.
    read: AtomicU64,
    written: AtomicU64,
    /// `read` when the last request ended: bytes read since, with nothing in flight, are the
    /// start of the next HTTP/1.1 request head.
    read_at_end: AtomicU64,
    /// Answer bytes produced for this connection's client and not yet written to it.
    unread: AtomicUsize,
    /// Where unread answers are counted with every other payload; `None` in unit tests.
    budget: Option<Arc<BodyBudget>>,
}

/// A request in flight on its connection; dropping it (also when the client went away and the
/// handler's future was dropped) ends it.
pub struct InFlight(Arc<Activity>);

impl Activity {
    fn new(http2: bool, budget: Arc<BodyBudget>) -> Activity {
        let mut activity = Activity::default();
        *activity.http2.get_mut() = http2;
        activity.budget = Some(budget);
        activity
    }

    pub fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        InFlight(Arc::clone(self))
    }

    #[cfg(test)]
    pub fn for_test(budget: Arc<BodyBudget>) -> Activity {
        Activity::new(false, budget)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Answer bytes produced and not yet written.
    pub fn unread(&self) -> usize {
        self.unread.load(Ordering::Relaxed)
    }

    /// Counts answer bytes produced (handed, or about to be handed, to the connection).
    pub fn produced(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.unread.fetch_add(bytes, Ordering::AcqRel);
        if let Some(budget) = &self.budget {
            budget.add_answer(bytes);
        }
    }

    /// Takes back answer bytes that will never be written (a body dropped before it was sent).
    pub fn unproduced(&self, bytes: usize) {
        self.release(bytes);
    }

    /// Counts bytes written to the socket: they are no longer held by the server. Frame and
    /// header bytes are counted too, so the estimate errs towards less held, never more.
    fn wrote(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
        self.release(bytes);
    }

    fn release(&self, bytes: usize) {
        let mut taken = 0;
        let _ = self
            .unread
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                taken = held.min(bytes);
                Some(held - taken)
            });
        if taken > 0 {
            if let Some(budget) = &self.budget {
                budget.remove_answer(taken);
            }
        }
    }

    fn was_read(&self, bytes: usize) {
        self.read.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let read = self.0.read.load(Ordering::Relaxed);
        self.0.read_at_end.store(read, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Activity {
    /// The connection and everything that answered on it are gone: so are its unread answers.
    fn drop(&mut self) {
        let held = *self.unread.get_mut();
        if held > 0 {
            if let Some(budget) = &self.budget {
                budget.remove_answer(held);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so `max_connections` can be met.
/// Call once at start-up.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write only the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// `max_connections`, lowered to what the soft limit on open files allows.
fn effective_max_connections(configured: usize) -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct passed.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if ok && limit.rlim_cur != libc::RLIM_INFINITY {
            let fds: u64 = limit.rlim_cur;
            let room = if fds > 2 * RESERVED_FDS {
                fds - RESERVED_FDS
            } else {
                fds / 2
            };
            let allowed = usize::try_from(room).unwrap_or(usize::MAX).max(1);
            if allowed < configured {
                tracing::warn!(
                    max_connections = configured,
                    open_file_limit = fds,
                    effective = allowed,
                    "max_connections lowered to fit the open-file limit"
                );
                return allowed;
            }
        }
    }
    configured
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and h2c on one port: the V2 REST API.
    Http,
    /// HTTP/2 only: gRPC.
    Grpc,
}

impl Protocol {
    /// The listener's label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    /// What the listener offers in ALPN under TLS.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http => &[b"h2", b"http/1.1"],
            Protocol::Grpc => &[b"h2"],
        }
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection's socket, counting what passes through it for the watchdog (a head that never
/// completes, a client that reads nothing) and for the unread-answer count.
struct Watched {
    stream: Stream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.was_read(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.activity.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.activity.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The accept loop every listener shares: the connection limit, the idle, header and
/// slow-reader watchdogs, admission of each request (`answers`), and the drain on shutdown.
/// `make_service` builds one connection's service; `refuse` turns a refusal into the
/// listener's own form of answer.
#[allow(clippy::too_many_arguments)]
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    protocol: Protocol,
    tls: Option<Arc<Tls>>,
    make_service: impl Fn() -> S,
    refuse: fn(ApiError) -> http::Response<B>,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = state.config.connections.clone();
    let max_connections = effective_max_connections(limits.max_connections);
    let builder = Arc::new(connection_builder(protocol));
    // An HTTP client is told why; a gRPC client (HTTP/2 from its first byte) is closed on.
    let refusal = match protocol {
        Protocol::Http => refusal_response(max_connections),
        Protocol::Grpc => Vec::new(),
    };
    let (open_tx, open_rx) = watch::channel(0usize);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut refused_log = Throttle::new(LOG_PERIOD);
    let mut accept_log = Throttle::new(LOG_PERIOD);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(&e, &state.metrics, &mut accept_log).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if *open_tx.borrow() >= max_connections {
            state.metrics.record_connection_refused();
            if let Some(suppressed) = refused_log.due() {
                tracing::warn!(
                    max_connections,
                    suppressed,
                    "connection refused: the server holds max_connections"
                );
            }
            if !refusal.is_empty() {
                let _ = stream.try_write(&refusal);
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(
            protocol == Protocol::Grpc,
            Arc::clone(&state.body_budget),
        ));
        let service = answers::Admitted {
            inner: make_service(),
            activity: Arc::clone(&activity),
            budget: Arc::clone(&state.body_budget),
            metrics: state.metrics.clone(),
            listener: protocol.label(),
            refuse,
        };
        let open = OpenGuard::new(open_tx.clone(), state.metrics.clone());
        let windows = Windows::of(&limits);
        let mut watchdog = Watchdog::new(Arc::clone(&activity), stop_rx.clone(), windows);
        let (builder, tls, metrics) = (Arc::clone(&builder), tls.clone(), state.metrics.clone());
        let handshake_window = limits.header_read_timeout;
        tokio::spawn(async move {
            let _open = open;
            // The handshake runs on the connection's task, within the header-read window, so
            // a client that never finishes it holds nothing past that window.
            let Some(io) = handshake(stream, tls, handshake_window, &metrics, protocol).await
            else {
                return;
            };
            let io = Watched {
                stream: io,
                activity,
            };
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            tokio::pin!(conn);
            loop {
                let tick = watchdog.tick();
                let step = tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = watchdog.stop.changed(), if !watchdog.stopping => watchdog.on_stop(),
                    () = tokio::time::sleep(tick) => watchdog.on_tick(),
                };
                match step {
                    Step::Wait => {}
                    Step::Close => conn.as_mut().graceful_shutdown(),
                    Step::Drop(why) => {
                        tracing::debug!(why = why.as_str(), "connection dropped");
                        return;
                    }
                }
            }
        });
    }
    state
        .stopping
        .store(true, std::sync::atomic::Ordering::Release);
    drop(listener);
    let _ = stop_tx.send(true);
    drain(open_rx, state.config.shutdown_timeout).await;
}

/// Counts and (throttled) logs a failed accept, then backs off: out of file descriptors and
/// similar would otherwise spin.
async fn accept_failed(e: &std::io::Error, metrics: &crate::metrics::Metrics, log: &mut Throttle) {
    metrics.record_accept_error();
    if let Some(suppressed) = log.due() {
        tracing::warn!(error = %e, suppressed, "accept failed; backing off");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// hyper's connection settings for a listener: keep-alive and bounded heads for HTTP/1.1, a
/// stream limit for HTTP/2, and HTTP/2 only for gRPC.
fn connection_builder(protocol: Protocol) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
    b.http2()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    if protocol == Protocol::Grpc {
        b = b.http2_only();
    }
    b
}

/// The TLS handshake, when the listener has TLS, within `window`: `None` (counted and logged)
/// when it fails or does not finish in time.
async fn handshake(
    stream: TcpStream,
    tls: Option<Arc<Tls>>,
    window: Duration,
    metrics: &crate::metrics::Metrics,
    protocol: Protocol,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Plain(stream));
    };
    match tokio::time::timeout(window, tls.acceptor().accept(stream)).await {
        Ok(Ok(tls_stream)) => Some(Stream::Tls(Box::new(tls_stream))),
        Ok(Err(e)) => {
            metrics.record_tls_handshake_failure(protocol.label());
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.record_tls_handshake_failure(protocol.label());
            tracing::debug!("TLS handshake did not finish within the header-read timeout");
            None
        }
    }
}

/// Waits for the open connections to close, at most the shutdown grace period.
async fn drain(mut open: watch::Receiver<usize>, grace: Duration) {
    tracing::info!("shutting down: draining connections");
    tokio::select! {
        _ = open.wait_for(|&n| n == 0) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// The whole answer to a connection beyond `max_connections`, written once without waiting.
fn refusal_response(max_connections: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": format!("the server holds its limit of {max_connections} connections; retry later"),
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Counts one open connection for as long as it lives.
struct OpenGuard {
    open: watch::Sender<usize>,
    metrics: crate::metrics::Metrics,
}

impl OpenGuard {
    fn new(open: watch::Sender<usize>, metrics: crate::metrics::Metrics) -> OpenGuard {
        open.send_modify(|n| *n += 1);
        metrics.add_open_connections(1);
        OpenGuard { open, metrics }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n -= 1);
        self.metrics.add_open_connections(-1);
    }
}

/// The windows a connection's watchdog applies.
#[derive(Clone, Copy, Debug)]
struct Windows {
    /// A new connection's first request head, and any later HTTP/1.1 head once its first
    /// bytes arrived, must be complete within this.
    header: Duration,
    /// A connection with nothing in flight and nothing started for this long is closed.
    idle: Duration,
    /// A connection holding unread answers whose client reads nothing for this long is dropped.
    send: Duration,
}

impl Windows {
    fn of(limits: &crate::config::ConnectionLimits) -> Windows {
        Windows {
            header: limits.header_read_timeout,
            idle: limits.keep_alive_timeout,
            send: limits.body_read_timeout,
        }
    }
}

/// Decides when a connection is closed: idle, a request head that never completes, or a client
/// that reads none of its answers; and drains it on shutdown. A plain state machine fed ticks
/// and the stop signal; the connection task carries out its steps.
struct Watchdog {
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
    stopping: bool,
    windows: Windows,
    /// Since when the connection has been quiet: nothing in flight, nothing started.
    quiet: Quiet,
    /// Since when bytes of an HTTP/1.1 head that has not completed have been waiting.
    head_since: Option<Instant>,
    /// Since when answers have waited with nothing written.
    stalled: Stalled,
    closing_since: Option<Instant>,
}

/// What the connection task does after a watchdog event.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Wait,
    /// Finish the exchange in progress, then close.
    Close,
    /// Close now.
    Drop(Why),
}

/// Why a connection was dropped rather than closed gracefully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// An HTTP/1.1 connection with nothing in flight: nothing to finish (a half-sent head
    /// included, which a graceful close would wait for).
    NothingInFlight,
    /// Its client read none of its answers for the send window.
    NotReading,
    /// It did not close within a window of its graceful close.
    CloseTimedOut,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::NothingInFlight => "idle, or a request head not completed in time",
            Why::NotReading => "its client read none of its answers within body_read_timeout_s",
            Why::CloseTimedOut => "it did not close after a graceful shutdown",
        }
    }
}

impl Watchdog {
    fn new(activity: Arc<Activity>, stop: watch::Receiver<bool>, windows: Windows) -> Watchdog {
        let stopping = *stop.borrow();
        Watchdog {
            activity,
            stop,
            stopping,
            windows,
            quiet: Quiet::new(Instant::now()),
            head_since: None,
            stalled: Stalled::default(),
            closing_since: None,
        }
    }

    fn http2(&self) -> bool {
        self.activity.http2.load(Ordering::Relaxed)
    }

    /// The time to the next sample: a fraction of the shortest window that applies now.
    fn tick(&self) -> Duration {
        if self.stopping {
            return DRAIN_TICK;
        }
        // An HTTP/1.1 connection may start a head at any moment, which must complete within
        // the header window: it is sampled at that window's pace throughout.
        let mut window = if self.activity.started.load(Ordering::Relaxed) == 0 || !self.http2() {
            self.windows.header.min(self.windows.idle)
        } else {
            self.windows.idle
        };
        if self.activity.unread() > 0 {
            window = window.min(self.windows.send);
        }
        window / TICKS_PER_WINDOW
    }

    fn on_stop(&mut self) -> Step {
        self.stopping = true;
        self.quiet = Quiet::new(Instant::now());
        // HTTP/2 has GOAWAY, which tells the client which requests were taken.
        if self.http2() {
            self.close()
        } else {
            Step::Wait
        }
    }

    fn on_tick(&mut self) -> Step {
        self.on_tick_at(Instant::now())
    }

    fn on_tick_at(&mut self, now: Instant) -> Step {
        let a = &self.activity;
        if self.stalled.observe(a, now) >= self.windows.send {
            return Step::Drop(Why::NotReading);
        }
        let idle_h1 = !self.http2() && a.in_flight() == 0;
        if let Some(since) = self.closing_since {
            // A client that does not read its last response is not waited for.
            return if idle_h1 {
                Step::Drop(Why::NothingInFlight)
            } else if now.duration_since(since) >= self.windows.idle {
                Step::Drop(Why::CloseTimedOut)
            } else {
                Step::Wait
            };
        }
        // Bytes read since the last HTTP/1.1 request ended, with none in flight: the head of the
        // next one, which must complete within the header window from its first bytes.
        let head_waiting = idle_h1
            && a.started.load(Ordering::Relaxed) > 0
            && a.read.load(Ordering::Relaxed) > a.read_at_end.load(Ordering::Relaxed);
        if !head_waiting {
            self.head_since = None;
        } else if self.head_since.get_or_insert(now).elapsed_at(now) >= self.windows.header {
            return self.close();
        }
        let quiet = self.quiet.observe(a, now);
        let window = if self.stopping {
            DRAIN_TICK * DRAIN_IDLE_TICKS
        } else if a.started.load(Ordering::Relaxed) == 0 {
            self.windows.header
        } else {
            self.windows.idle
        };
        if quiet >= window {
            self.close()
        } else {
            Step::Wait
        }
    }

    fn close(&mut self) -> Step {
        if !self.http2() && self.activity.in_flight() == 0 {
            return Step::Drop(Why::NothingInFlight);
        }
        if self.closing_since.is_some() {
            return Step::Wait;
        }
        self.closing_since = Some(Instant::now());
        Step::Close
    }
}

trait ElapsedAt {
    fn elapsed_at(&self, now: Instant) -> Duration;
}

impl ElapsedAt for Instant {
    fn elapsed_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self)
    }
}

/// How long a connection has had nothing in flight and nothing started.
struct Quiet {
    last_started: u64,
    since: Instant,
}

impl Quiet {
    fn new(now: Instant) -> Quiet {
        Quiet {
            last_started: 0,
            since: now,
        }
    }

    fn observe(&mut self, activity: &Activity, now: Instant) -> Duration {
        let started = activity.started.load(Ordering::Relaxed);
        if activity.in_flight() > 0 || started != self.last_started {
            self.last_started = started;
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

/// How long answers have waited on a connection while nothing was written.
#[derive(Default)]
struct Stalled {
    last_written: u64,
    since: Option<Instant>,
}

impl Stalled {
    fn observe(&mut self, activity: &Activity, now: Instant) -> Duration {
        let written = activity.written.load(Ordering::Relaxed);
        if activity.unread() == 0 || written != self.last_written {
            self.last_written = written;
            self.since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.since.get_or_insert(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS: Windows = Windows {
        header: Duration::from_secs(8),
        idle: Duration::from_secs(40),
        send: Duration::from_secs(20),
    };

    fn watchdog(activity: &Arc<Activity>, stop: watch::Receiver<bool>) -> Watchdog {
        Watchdog::new(Arc::clone(activity), stop, WINDOWS)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn quiet_time_restarts_with_every_request() {
        let activity = Arc::new(Activity::default());
        let t0 = Instant::now();
        let mut quiet = Quiet::new(t0);
        assert_eq!(quiet.observe(&activity, t0 + secs(3)), secs(3));
        let request = activity.begin(http::Version::HTTP_11);
        assert_eq!(quiet.observe(&activity, t0 + secs(4)), Duration::ZERO);
        assert_eq!(
            quiet.observe(&activity, t0 + secs(9)),
            Duration::ZERO,
            "a request in flight is not quiet"
        );
        drop(request);
        assert_eq!(quiet.observe(&activity, t0 + secs(10)), secs(1));
        drop(activity.begin(http::Version::HTTP_2));
        assert_eq!(
            quiet.observe(&activity, t0 + secs(11)),
            Duration::ZERO,
            "a request started since is activity"
        );
        assert!(activity.http2.load(Ordering::Relaxed));
    }

    #[test]
    fn a_new_connection_gets_the_header_window_then_the_idle_one() {
        let activity = Arc::new(Activity::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut w = watchdog(&activity, stop_rx);
        let t0 = Instant::now();
        assert_eq!(w.tick(), secs(2), "header window before any request");
        assert_eq!(w.on_tick_at(t0 + secs(7)), Step::Wait);
        assert_eq!(
            w.on_tick_at(t0 + secs(9)),
            Step::Drop(Why::NothingInFlight),
            "no complete head within the header window: dropped, not closed gracefully"
        );

        let activity = Arc::new(Activity::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut w = watchdog(&activity, stop_rx);
        drop(activity.begin(http::Version::HTTP_11));
        assert_eq!(w.on_tick_at(t0 + secs(1)), Step::Wait);
        assert_eq!(
            w.tick(),
            secs(2),
            "HTTP/1.1 is sampled at the header window's pace throughout"
        );
        assert_eq!(w.on_tick_at(t0 + secs(40)), Step::Wait);
        assert_eq!(
            w.on_tick_at(t0 + secs(42)),
            Step::Drop(Why::NothingInFlight)
        );
    }

    #[test]
    fn a_head_started_between_keep_alive_requests_gets_the_header_window() {
        let activity = Arc::new(Activity::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut w = watchdog(&activity, stop_rx);
        let t0 = Instant::now();
        activity.was_read(100);
        drop(activity.begin(http::Version::HTTP_11));
        assert_eq!(
            w.on_tick_at(t0 + secs(20)),
            Step::Wait,
            "idle, within keep-alive"
        );
        activity.was_read(10); // half of the next head
        assert_eq!(w.on_tick_at(t0 + secs(21)), Step::Wait);
        assert_eq!(w.on_tick_at(t0 + secs(28)), Step::Wait);
        assert_eq!(
            w.on_tick_at(t0 + secs(30)),
            Step::Drop(Why::NothingInFlight),
            "closed at the header timeout, not after the keep-alive one"
        );
    }

    #[test]
    fn a_client_that_reads_nothing_is_dropped_whatever_is_in_flight() {
        let budget = BodyBudget::new(1 << 30, crate::metrics::Metrics::new());
        let activity = Arc::new(Activity::new(true, Arc::clone(&budget)));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut w = watchdog(&activity, stop_rx);
        let t0 = Instant::now();
        let busy = activity.begin(http::Version::HTTP_2);
        activity.produced(1 << 20);
        assert_eq!(budget.used(), 1 << 20);
        assert_eq!(
            w.tick(),
            secs(5),
            "the send window is the shortest that applies"
        );
        assert_eq!(w.on_tick_at(t0 + secs(1)), Step::Wait);
        activity.wrote(1000);
        assert_eq!(
            w.on_tick_at(t0 + secs(15)),
            Step::Wait,
            "it reads: not stalled"
        );
        assert_eq!(
            w.on_tick_at(t0 + secs(16)),
            Step::Wait,
            "nothing written since"
        );
        assert_eq!(w.on_tick_at(t0 + secs(35)), Step::Wait);
        assert_eq!(w.on_tick_at(t0 + secs(37)), Step::Drop(Why::NotReading));
        drop(busy);
        drop(w);
        drop(activity);
        assert_eq!(
            budget.used(),
            0,
            "the dropped connection gives back its answers"
        );
    }

    #[test]
    fn shutdown_closes_http2_at_once_and_drains_http1() {
        let (stop_tx, _) = watch::channel(false);
        let h2 = Arc::new(Activity::default());
        drop(h2.begin(http::Version::HTTP_2));
        let mut w = watchdog(&h2, stop_tx.subscribe());
        let busy = h2.begin(http::Version::HTTP_2);
        stop_tx.send(true).unwrap();
        assert_eq!(w.on_stop(), Step::Close, "HTTP/2 gets its GOAWAY at once");
        let t0 = Instant::now();
        assert_eq!(w.on_tick_at(t0), Step::Wait, "its streams finish");
        assert_eq!(w.on_tick_at(t0 + secs(41)), Step::Drop(Why::CloseTimedOut));
        drop(busy);

        let h1 = Arc::new(Activity::default());
        let mut w = watchdog(&h1, stop_tx.subscribe());
        assert!(w.stopping);
        assert_eq!(w.tick(), DRAIN_TICK);
        drop(h1.begin(http::Version::HTTP_11));
        let busy = h1.begin(http::Version::HTTP_11);
        let t0 = Instant::now();
        assert_eq!(
            w.on_tick_at(t0 + secs(5)),
            Step::Wait,
            "a request in flight is served while draining"
        );
        drop(busy);
        assert_eq!(w.on_tick_at(t0 + secs(5)), Step::Wait);
        assert_eq!(w.on_tick_at(t0 + secs(6)), Step::Drop(Why::NothingInFlight));
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = String::from_utf8(refusal_response(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("limit of 7 connections"));
    }
}
