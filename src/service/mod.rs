//! What both front ends serve, over the state they share: HTTP (`http`) and gRPC (`grpc`) are
//! codecs over this module and the layers below it, and neither imports the other. Here are
//! the shared state ([`AppState`]), the errors with the one code each has ([`ErrorCode`], mapped
//! once to an HTTP status and once to a gRPC code), the body budget every payload is admitted
//! under, the bearer-token checks, and the views both front ends answer from.

mod auth;
mod budget;
mod error;
mod infer;
mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use auth::{check_bearer, check_feedback};
pub use budget::{BodyBudget, Reservation};
pub use error::{ApiError, ErrorCode};
pub use infer::{infer, InferCodec};
pub use views::{
    model_config, model_metadata, server_metadata, statistics, ModelConfig, ModelMetadata,
    ModelStatistics, ServerMetadata, Statistics, TensorMetadata,
};

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::monitoring::MonitorHub;
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
    /// With replicas sharing the deployments: feedback for rows another replica answered,
    /// relayed to it (`monitoring::relay`).
    pub relay: Option<Arc<crate::monitoring::relay::Relay>>,
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
}
