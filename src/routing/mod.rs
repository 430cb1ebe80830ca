//! Routing: which loaded version answers a request.
//!
//! The routing table is one immutable snapshot behind an `ArcSwap`: a request reads it without a
//! lock, and `repository` publishes a change as a single atomic store. A version dropped from the
//! table keeps serving the requests that already hold it, and is freed after the last one.
//! Routing also validates requests against the chosen version and records their outcome.

mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

pub use validate::{validate, InvalidRequest, OutputPick};

use crate::batching::SchedulerError;
use crate::metrics::FailureReason;
use crate::model::LoadedVersion;
use crate::protocol::InferRequest;
use crate::tensor::Tensor;

/// Everything the request path needs to find a version, in one snapshot.
#[derive(Clone, Default)]
pub struct RoutingTable {
    pub models: HashMap<String, ModelRoute>,
}

/// One model's serving state.
#[derive(Clone, Default)]
pub struct ModelRoute {
    /// Versions ready to serve.
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Versions that should serve but cannot, with the reason.
    pub failed: BTreeMap<u64, String>,
    /// Why the model as a whole is not serving (bad config, no versions, unloaded).
    pub reason: Option<String>,
}

impl ModelRoute {
    /// The version a request without a version goes to: the highest ready one.
    pub fn default_version(&self) -> Option<&Arc<LoadedVersion>> {
        self.versions.values().next_back()
    }

    pub fn is_ready(&self) -> bool {
        !self.versions.is_empty()
    }
}

/// Why a request found no version to run on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("unknown version '{version}' of model '{model}'")]
    UnknownVersion { model: String, version: String },
    #[error("model '{model}'{} is not ready: {reason}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotReady {
        model: String,
        version: Option<u64>,
        reason: String,
    },
}

/// Why an inference failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// A finished inference, ready to encode.
pub struct InferResult {
    pub version: Arc<LoadedVersion>,
    /// The engine's outputs, in signature order.
    pub outputs: Vec<Tensor>,
    pub picks: Vec<OutputPick>,
}

impl InferResult {
    /// The served outputs asked for, with their names and binary flags.
    pub fn picked(&self) -> impl Iterator<Item = (&str, &Tensor, bool)> {
        let io = &self.version.io;
        self.picks.iter().map(move |p| {
            (
                io.outputs[p.output].name.as_str(),
                &self.outputs[io.output_index[p.output]],
                p.binary,
            )
        })
    }
}

/// The request path's entry into serving.
#[derive(Default)]
pub struct Router {
    table: ArcSwap<RoutingTable>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Replaces one model's route (or removes it) in a single atomic store. Callers serialize
    /// their changes (the repository holds its lock), so read-copy-update never loses one.
    pub fn publish(&self, model: &str, route: Option<ModelRoute>) {
        self.table.rcu(|table| {
            let mut next = RoutingTable::clone(table);
            match &route {
                Some(r) => {
                    next.models.insert(model.to_string(), r.clone());
                }
                None => {
                    next.models.remove(model);
                }
            }
            next
        });
    }

    /// Finds the version a request names, or the model's default one.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, RouteError> {
        let table = self.table.load();
        let route = table
            .models
            .get(model)
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
        match version {
            None | Some("") => {
                route
                    .default_version()
                    .cloned()
                    .ok_or_else(|| RouteError::NotReady {
                        model: model.to_string(),
                        version: None,
                        reason: not_ready_reason(route),
                    })
            }
            Some(text) => {
                let unknown = || RouteError::UnknownVersion {
                    model: model.to_string(),
                    version: text.to_string(),
                };
                let v: u64 = text.parse().map_err(|_| unknown())?;
                if let Some(loaded) = route.versions.get(&v) {
                    return Ok(Arc::clone(loaded));
                }
                match route.failed.get(&v) {
                    Some(reason) => Err(RouteError::NotReady {
                        model: model.to_string(),
                        version: Some(v),
                        reason: reason.clone(),
                    }),
                    None => Err(unknown()),
                }
            }
        }
    }

    /// Resolves, validates, queues and waits: one inference, its outcome recorded in the
    /// version's metrics.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResult, InferError> {
        let started = Instant::now();
        let loaded = self.resolve(model, version)?;
        let outcome = run(&loaded, request).await;
        let took = started.elapsed();
        match outcome {
            Ok((outputs, picks)) => {
                loaded.metrics.record_success(took);
                Ok(InferResult {
                    version: loaded,
                    outputs,
                    picks,
                })
            }
            Err(error) => {
                loaded.metrics.record_failure(failure_reason(&error), took);
                Err(error)
            }
        }
    }
}

async fn run(
    loaded: &LoadedVersion,
    request: InferRequest,
) -> Result<(Vec<Tensor>, Vec<OutputPick>), InferError> {
    let (validated, picks) = validate(&loaded.io, request)?;
    let ticket = loaded.scheduler.submit(validated)?;
    let outputs = ticket.wait().await?;
    Ok((outputs, picks))
}

fn failure_reason(error: &InferError) -> FailureReason {
    match error {
        InferError::Route(_) => FailureReason::Unavailable,
        InferError::Invalid(_) => FailureReason::Invalid,
        InferError::Scheduler(e) => match e {
            SchedulerError::QueueFull { .. } => FailureReason::QueueFull,
            SchedulerError::Timeout { .. } => FailureReason::Timeout,
            SchedulerError::Stopped { .. } => FailureReason::Unavailable,
            SchedulerError::Engine(_) => FailureReason::Backend,
        },
    }
}

fn not_ready_reason(route: &ModelRoute) -> String {
    if let Some(reason) = &route.reason {
        return reason.clone();
    }
    match route.failed.iter().next_back() {
        Some((v, reason)) => format!("version {v} failed to load: {reason}"),
        None => "no version is loaded".into(),
    }
}
