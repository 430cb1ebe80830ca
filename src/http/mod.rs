//! The HTTP edge: hyper connections (HTTP/1.1 keep-alive and h2c on one port), routing of paths
//! to handlers, body limits, and the mapping of every error to a status in [`error`].
//!
//! Handlers decode with `protocol`, call `routing` and `repository`, and encode; nothing here
//! touches an engine or a queue directly.

mod body;
mod deployment;
mod error;
mod infer;
mod models;
mod repository;
mod routes;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::rollout::Rollout;
use crate::routing::Router;

/// What every handler may use.
pub struct AppState {
    pub config: ServerConfig,
    pub router: Arc<Router>,
    pub repository: Arc<Repository>,
    pub rollout: Arc<Rollout>,
    pub metrics: Metrics,
    /// Set once the startup load has finished.
    pub ready: AtomicBool,
    /// Set when shutdown begins, so readiness turns false while requests drain.
    pub stopping: AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }
}

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish for up to
/// the configured grace period.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1().keep_alive(true).max_buf_size(1 << 20);
        b.http2().max_concurrent_streams(1024);
        b
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    state.stopping.store(true, Ordering::Release);
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(state.config.shutdown_timeout) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (endpoint, result) = routes::dispatch(&state, req).await;
    let response = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            tracing::warn!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, "request refused");
        }
        e.into_response()
    });
    state
        .metrics
        .record_http(endpoint, response.status().as_u16());
    Ok(response)
}

/// A 200 response with a JSON body.
fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("serializing a JSON value cannot fail");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

/// An empty response with the given status (health endpoints answer by status alone).
fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static headers are valid")
}
