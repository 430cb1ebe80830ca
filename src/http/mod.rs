//! The HTTP edge: hyper connections (HTTP/1.1 keep-alive and h2c on one port), routing of paths
//! to handlers, body limits, and the mapping of every error to a status in [`error`].
//!
//! Handlers decode with `protocol`, call `routing` and `repository`, and encode; nothing here
//! touches an engine or a queue directly.

mod answers;
mod body;
mod conn;
mod deployment;
mod error;
mod infer;
mod models;
mod monitoring;
mod pages;
mod repository;
mod routes;
mod training;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

pub use body::{BodyBudget, Reservation};
pub use conn::{raise_fd_limit, serve, MAX_HEAD_BYTES};
pub use error::ApiError;
// The gRPC front end shares the accept loop, the views and the admin check.
pub(crate) use conn::{serve_connections, Protocol};
pub(crate) use infer::INLINE_LIMIT;
pub(crate) use models::{loaded_versions, stats_versions, EXTENSIONS};
pub(crate) use routes::check_bearer;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::monitor::MonitorHub;
use crate::offload::Offload;
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
    /// Request-body bytes held across all connections (`max_buffered_body_bytes`).
    pub body_budget: Arc<BodyBudget>,
    /// The blocking-pool share of request-path work (large decodes and encodes, inflation).
    pub offload: Offload,
    /// Every monitored model's prediction log, drift and quality.
    pub monitors: Arc<MonitorHub>,
    /// Training jobs, and the automatic retraining policy that starts some of them.
    pub training: Arc<crate::training::jobs::Jobs>,
    pub retrainer: Arc<crate::training::retrain::Retrainer>,
    /// Set once the startup load has finished.
    pub ready: AtomicBool,
    /// Set when shutdown begins, so readiness turns false while requests drain.
    pub stopping: AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// The bounds of one request body.
    fn body_limits(&self) -> body::BodyLimits {
        body::BodyLimits {
            max_bytes: self.config.max_body_bytes,
            timeout: self.config.connections.body_read_timeout,
        }
    }

    /// Reads a request's body under the server's limits.
    async fn read_body(
        &self,
        parts: &http::request::Parts,
        incoming: Incoming,
    ) -> Result<body::ReadBody, ApiError> {
        body::read(
            parts,
            incoming,
            self.body_limits(),
            &self.body_budget,
            &self.offload,
        )
        .await
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = req.version();
    let (endpoint, result) = routes::dispatch(&state, req).await;
    let mut response = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            tracing::warn!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, "request refused");
        }
        e.into_response()
    });
    // While draining, an HTTP/1.1 client is told not to send another request on this
    // connection, so none is ever cut off by the close that follows.
    if version < http::Version::HTTP_2 && state.stopping.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    state
        .metrics
        .record_http(endpoint, response.status().as_u16());
    Ok(response)
}

/// A 200 response with a JSON body.
fn json_response(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("our views serialize to JSON");
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
