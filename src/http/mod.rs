//! The HTTP edge: hyper connections (HTTP/1.1 keep-alive and h2c on one port), routing of paths
//! to handlers, body limits, and the mapping of every error to a status in [`error`].
//!
//! Handlers decode with `protocol`, call `service`, `routing` and `repository`, and encode;
//! nothing here touches an engine or a queue directly, and nothing here is shared with gRPC
//! except through `service` and `listener`.

mod body;
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
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub use error::status;

use crate::listener::{serve_connections, Protocol};
use crate::service::{ApiError, AppState};
use crate::tls::Tls;

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
        move || {
            let state = Arc::clone(&handler);
            hyper::service::service_fn(move |req| handle(Arc::clone(&state), req))
        },
        ApiError::into_response,
    )
    .await
}

impl AppState {
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
