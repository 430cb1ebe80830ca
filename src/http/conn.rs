//! Connections: accepted under a limit, closed when idle or never finishing their headers, and
//! drained on shutdown without dropping a request that is already on the wire.
//!
//! Each connection runs on its own task beside a watchdog that samples its [`Activity`] (requests
//! in flight, requests started) a few times per timeout; a connection with no request in flight
//! and none started for a whole window is closed gracefully. The window is
//! `header_read_timeout` until the first request head has arrived (so a client that sends only
//! part of its headers, or nothing, is dropped) and `keep_alive_timeout` after. The request path
//! pays two relaxed atomic increments and one decrement per request.
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

use super::AppState;

/// The largest request head (request line and headers) a client may send, and the most bytes
/// hyper buffers per connection while reading one. Bounds what a connection that never finishes
/// its headers can hold: `max_connections` × this.
pub const MAX_HEAD_BYTES: usize = 128 << 10;

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

/// What the service and the watchdog of one connection share.
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    http2: AtomicBool,
}

/// A request in flight on its connection; dropping it (also when the client went away and the
/// handler's future was dropped) ends it.
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        InFlight(Arc::clone(self))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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

/// Accepts HTTP connections until `shutdown` resolves, then drains them for up to the
/// configured grace period.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<Tls>>,
) {
    let handler = Arc::clone(&state);
    serve_connections(
        listener,
        state,
        shutdown,
        Protocol::Http,
        tls,
        move |activity| {
            let state = Arc::clone(&handler);
            hyper::service::service_fn(move |req| {
                super::handle(Arc::clone(&state), Arc::clone(&activity), req)
            })
        },
    )
    .await
}

/// The accept loop every listener shares: the connection limit, the idle and header
/// watchdogs, and the drain on shutdown. `make_service` builds one connection's service, given
/// the activity it must report its requests to.
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    protocol: Protocol,
    tls: Option<Arc<Tls>>,
    make_service: impl Fn(Arc<Activity>) -> S,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = state.config.connections.clone();
    let max_connections = effective_max_connections(limits.max_connections);
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1().keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
        b.http2()
            .max_concurrent_streams(1024)
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        if protocol == Protocol::Grpc {
            b = b.http2_only();
        }
        Arc::new(b)
    };
    // An HTTP client is told why; a gRPC client (HTTP/2 from its first byte) is closed on.
    let refusal = match protocol {
        Protocol::Http => refusal_response(max_connections),
        Protocol::Grpc => Vec::new(),
    };
    let (open_tx, mut open_rx) = watch::channel(0usize);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut refused_log = Throttle::new(LOG_PERIOD);
    let mut accept_log = Throttle::new(LOG_PERIOD);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    state.metrics.record_accept_error();
                    if let Some(suppressed) = accept_log.due() {
                        tracing::warn!(error = %e, suppressed, "accept failed; backing off");
                    }
                    // Out of file descriptors and similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
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
        let activity = Arc::new(Activity {
            http2: AtomicBool::new(protocol == Protocol::Grpc),
            ..Activity::default()
        });
        let service = make_service(Arc::clone(&activity));
        let open = OpenGuard::new(open_tx.clone(), state.metrics.clone());
        let mut watchdog = Watchdog::new(
            activity,
            stop_rx.clone(),
            limits.header_read_timeout,
            limits.keep_alive_timeout,
        );
        let (builder, tls, metrics) = (Arc::clone(&builder), tls.clone(), state.metrics.clone());
        let handshake_window = limits.header_read_timeout;
        tokio::spawn(async move {
            let _open = open;
            // The handshake runs on the connection's task, within the header-read window, so
            // a client that never finishes it holds nothing past that window.
            let io = match tls {
                None => Stream::Plain(stream),
                Some(tls) => {
                    match tokio::time::timeout(handshake_window, tls.acceptor().accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => Stream::Tls(Box::new(tls_stream)),
                        Ok(Err(e)) => {
                            metrics.record_tls_handshake_failure(protocol.label());
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.record_tls_handshake_failure(protocol.label());
                            tracing::debug!(
                                "TLS handshake did not finish within the header-read timeout"
                            );
                            return;
                        }
                    }
                }
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
                    Step::Drop => {
                        tracing::debug!(
                            "connection dropped: it did not close after a graceful shutdown"
                        );
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
    tracing::info!("shutting down: draining connections");
    tokio::select! {
        _ = open_rx.wait_for(|&n| n == 0) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(state.config.shutdown_timeout) => {
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

/// Decides when a connection that stays idle is closed, and drains it on shutdown. A plain
/// state machine fed ticks and the stop signal; the connection task carries out its steps.
struct Watchdog {
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
    stopping: bool,
    header_window: Duration,
    idle_window: Duration,
    idle: IdleTicks,
    closing_since: Option<Instant>,
}

/// What the connection task does after a watchdog event.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Wait,
    /// Finish the exchange in progress, then close.
    Close,
    /// Give up on a connection that did not close after `Close`.
    Drop,
}

impl Watchdog {
    fn new(
        activity: Arc<Activity>,
        stop: watch::Receiver<bool>,
        header_window: Duration,
        idle_window: Duration,
    ) -> Watchdog {
        let stopping = *stop.borrow();
        Watchdog {
            activity,
            stop,
            stopping,
            header_window,
            idle_window,
            idle: IdleTicks::default(),
            closing_since: None,
        }
    }

    /// The time to the next sample.
    fn tick(&self) -> Duration {
        if self.stopping {
            DRAIN_TICK
        } else if self.activity.started.load(Ordering::Relaxed) == 0 {
            self.header_window / TICKS_PER_WINDOW
        } else {
            self.idle_window / TICKS_PER_WINDOW
        }
    }

    fn on_stop(&mut self) -> Step {
        self.stopping = true;
        self.idle = IdleTicks::default();
        // HTTP/2 has GOAWAY, which tells the client which requests were taken.
        if self.activity.http2.load(Ordering::Relaxed) {
            self.close()
        } else {
            Step::Wait
        }
    }

    fn on_tick(&mut self) -> Step {
        if let Some(since) = self.closing_since {
            // A client that does not read its last response is not waited for.
            return if since.elapsed() >= self.idle_window {
                Step::Drop
            } else {
                Step::Wait
            };
        }
        let needed = if self.stopping {
            DRAIN_IDLE_TICKS
        } else {
            TICKS_PER_WINDOW
        };
        if self.idle.observe(&self.activity) >= needed {
            self.close()
        } else {
            Step::Wait
        }
    }

    fn close(&mut self) -> Step {
        if self.closing_since.is_some() {
            return Step::Wait;
        }
        self.closing_since = Some(Instant::now());
        Step::Close
    }
}

/// Counts consecutive samples with nothing in flight and nothing started since the last one.
#[derive(Default)]
struct IdleTicks {
    last_started: u64,
    ticks: u32,
}

impl IdleTicks {
    fn observe(&mut self, activity: &Activity) -> u32 {
        let started = activity.started.load(Ordering::Relaxed);
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        if busy || started != self.last_started {
            self.last_started = started;
            self.ticks = 0;
        } else {
            self.ticks += 1;
        }
        self.ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_ticks_count_only_quiet_samples() {
        let activity = Arc::new(Activity::default());
        let mut idle = IdleTicks::default();
        assert_eq!(idle.observe(&activity), 1);
        assert_eq!(idle.observe(&activity), 2);
        let request = activity.begin(http::Version::HTTP_11);
        assert_eq!(idle.observe(&activity), 0);
        assert_eq!(
            idle.observe(&activity),
            0,
            "a request in flight is not idle"
        );
        drop(request);
        assert_eq!(idle.observe(&activity), 1);
        drop(activity.begin(http::Version::HTTP_2));
        assert_eq!(
            idle.observe(&activity),
            0,
            "a request started since is activity"
        );
        assert!(activity.http2.load(Ordering::Relaxed));
    }

    #[test]
    fn the_watchdog_closes_idle_connections_and_drains_on_stop() {
        let activity = Arc::new(Activity::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut w = Watchdog::new(
            Arc::clone(&activity),
            stop_rx,
            Duration::from_secs(8),
            Duration::from_secs(40),
        );
        assert_eq!(
            w.tick(),
            Duration::from_secs(2),
            "header window before any request"
        );
        for _ in 0..TICKS_PER_WINDOW - 1 {
            assert_eq!(w.on_tick(), Step::Wait);
        }
        let busy = activity.begin(http::Version::HTTP_11);
        assert_eq!(w.on_tick(), Step::Wait);
        assert_eq!(
            w.tick(),
            Duration::from_secs(10),
            "keep-alive window after one"
        );
        drop(busy);
        for _ in 0..TICKS_PER_WINDOW - 1 {
            assert_eq!(w.on_tick(), Step::Wait);
        }
        assert_eq!(w.on_tick(), Step::Close);
        assert_eq!(
            w.on_tick(),
            Step::Wait,
            "closing, within the grace of one window"
        );
        w.closing_since = Some(Instant::now() - Duration::from_secs(41));
        assert_eq!(w.on_tick(), Step::Drop);

        let h2 = Arc::new(Activity::default());
        drop(h2.begin(http::Version::HTTP_2));
        let mut w = Watchdog::new(
            Arc::clone(&h2),
            stop_tx.subscribe(),
            Duration::from_secs(8),
            Duration::from_secs(40),
        );
        stop_tx.send(true).unwrap();
        assert_eq!(w.on_stop(), Step::Close, "HTTP/2 gets its GOAWAY at once");
        let h1 = Arc::new(Activity::default());
        let mut w = Watchdog::new(
            Arc::clone(&h1),
            stop_tx.subscribe(),
            Duration::from_secs(8),
            Duration::from_secs(40),
        );
        assert!(w.stopping);
        assert_eq!(w.tick(), DRAIN_TICK);
        let busy = h1.begin(http::Version::HTTP_11);
        assert_eq!(
            w.on_tick(),
            Step::Wait,
            "a request in flight is served while draining"
        );
        drop(busy);
        let mut steps = Vec::new();
        for _ in 0..DRAIN_IDLE_TICKS {
            steps.push(w.on_tick());
        }
        assert_eq!(steps.last(), Some(&Step::Close));
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
