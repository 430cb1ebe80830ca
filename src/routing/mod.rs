//! Routing: which loaded version answers a request.
//!
//! The routing table is one immutable snapshot behind an `ArcSwap`: a request reads it without a
//! lock, and a change (from `repository` or `rollout`) is one atomic store made under a writers'
//! mutex, so concurrent writers never lose each other's change. A version dropped from the table
//! keeps serving the requests that already hold it, and is freed after the last one.
//!
//! A request that names a version goes to it. One that does not goes through the model's
//! deployment (which `rollout` owns): its stable version, or with a canary candidate a weighted (optionally sticky)
//! pick between the two, or with a shadow candidate the stable version while a copy runs on the
//! candidate off the response path.

mod error_rate;
mod latency;
mod shadow;
mod tracker;
mod trial_labels;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use arc_swap::ArcSwap;

pub use error_rate::ErrorTest;
pub use tracker::{
    ArmCounts, ArmSnapshot, ArmStats, LatencyTest, ShadowCounts, ShadowSnapshot, ShadowStats,
    Tracker, TrialCounts,
};
pub use trial_labels::record_trial_labels;

use crate::batching::SchedulerError;
use crate::metrics::FailureReason;
use cairn_monitor::log::{Arm as LogArm, RequestRecord};

use crate::model::LoadedVersion;
pub use crate::model::{InvalidRequest, OutputPick};
use crate::monitoring::{RecordBuffers, VersionMonitor};
use crate::offload::Offload;
use crate::request::InferRequest;
use crate::rollout::{Candidate, CandidateMode, Deployment};
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
    /// Where requests without a version go.
    pub deployment: Deployment,
}

impl ModelRoute {
    /// The highest ready version.
    pub fn highest(&self) -> Option<&Arc<LoadedVersion>> {
        self.versions.values().next_back()
    }

    /// The version that answers requests without a version, ignoring any canary.
    pub fn stable(&self) -> Option<&Arc<LoadedVersion>> {
        match self.deployment.stable {
            Some(v) => self.versions.get(&v).or_else(|| self.highest()),
            None => self.highest(),
        }
    }

    pub fn is_ready(&self) -> bool {
        !self.versions.is_empty()
    }
}

/// How a model's deployment follows a change to its route: `rollout` provides the rules, and
/// routing applies them inside every [`Router::update`], after the change and before the store,
/// so a new version and the deployment it implies are published together (a new version under
/// `on_new_version = "canary"` never takes all traffic, not even for one request).
pub trait DeploymentRules: Send + Sync + 'static {
    /// Adjusts `after` (the route as changed) given `before` (as it was).
    fn settle(&self, model: &str, before: &ModelRoute, after: &mut ModelRoute);
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

/// Looks up request headers by name (for sticky canary keys); `http` provides it.
pub trait RequestKeys: Sync {
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl RequestKeys for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
}

/// No headers (in-process callers, warm-up).
pub struct NoKeys;

impl RequestKeys for NoKeys {
    fn header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

/// The request path's entry into serving.
pub struct Router {
    table: ArcSwap<RoutingTable>,
    writers: Mutex<()>,
    rules: Arc<dyn DeploymentRules>,
    /// Where large shadow comparisons run.
    offload: Offload,
}

/// Which side of a deployment a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// The request named its version.
    Direct,
    Stable,
    Candidate,
}

/// Where one request goes, decided from one snapshot.
struct Plan {
    target: Arc<LoadedVersion>,
    arm: Arm,
    /// The candidate's trial, when the request went through a deployment with a candidate.
    trial: Option<Arc<Tracker>>,
    /// The candidate that receives a copy (shadow mode).
    shadow: Option<Arc<LoadedVersion>>,
}

impl Router {
    pub fn new(rules: Arc<dyn DeploymentRules>, offload: Offload) -> Router {
        Router {
            table: ArcSwap::default(),
            writers: Mutex::new(()),
            rules,
            offload,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Changes one model's route with `change` (creating it if needed) and publishes the result
    /// in one atomic store. Writers are serialized, so a change is never lost to a concurrent
    /// one; readers never wait. Returns what `change` returned.
    pub fn update<R>(&self, model: &str, change: impl FnOnce(&mut ModelRoute) -> R) -> R {
        let _writer = self.writers.lock();
        let mut next = RoutingTable::clone(&self.table.load());
        let route = next.models.entry(model.to_string()).or_default();
        let before = route.clone();
        let result = change(route);
        self.rules.settle(model, &before, route);
        self.table.store(Arc::new(next));
        result
    }

    /// Finds the version a request names, or the stable version of the model's deployment.
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
        resolve_in(route, model, version)
    }

    /// Resolves (through the deployment when no version is named), validates, queues and
    /// waits: one inference. Its outcome is recorded in the answering version's metrics and,
    /// when a deployment with a candidate routed it, in the candidate's trial.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        mut request: InferRequest,
        keys: &(dyn RequestKeys + Sync),
    ) -> Result<InferResult, InferError> {
        let started = Instant::now();
        let plan = self.plan(model, version, keys)?;
        let shadow = plan.shadow.as_ref().zip(plan.trial.as_ref());
        // Whether this request is logged is decided once, by the answering version's sampling.
        let logged = plan
            .target
            .monitor
            .as_ref()
            .filter(|m| m.sampled())
            .map(|m| Logged {
                monitor: Arc::clone(m),
                // Nothing past routing reads the id; the record takes a copy in its own buffer.
                id: request.id.take().unwrap_or_default(),
                time_us: crate::monitoring::now_us(),
            });
        let (outcome, inputs) = run(
            &plan.target,
            request,
            shadow,
            &self.offload,
            logged.as_ref(),
        )
        .await;
        let took = started.elapsed();
        if let Some(trial) = &plan.trial {
            let server_side_ok = !matches!(outcome, Err(InferError::Scheduler(_)));
            let invalid = matches!(outcome, Err(InferError::Invalid(_)));
            match plan.arm {
                _ if invalid => {}
                Arm::Stable => trial.stable.record(server_side_ok, took),
                Arm::Candidate => trial.candidate.record(server_side_ok, took),
                Arm::Direct => {}
            }
        }
        if let (Some(logged), Some((buffers, rows))) = (logged, inputs) {
            let RecordBuffers { mut values, id } = buffers;
            let status = match &outcome {
                Ok((outputs, _)) => {
                    logged.monitor.layout.fill_outputs(&mut values, rows, |i| {
                        served_output(&plan.target, outputs, i)
                    });
                    "ok"
                }
                Err(e) => failure_reason(e).label(),
            };
            let named = !matches!(version, None | Some(""));
            let arm = match plan.arm {
                _ if named => LogArm::Direct,
                Arm::Candidate => LogArm::Canary,
                Arm::Stable | Arm::Direct => LogArm::Stable,
            };
            logged
                .monitor
                .log(RequestRecord {
                    id,
                    time_us: logged.time_us,
                    version: plan.target.version,
                    arm,
                    latency_us: took.as_micros() as u64,
                    status,
                    rows,
                    values,
                })
                .await;
        }
        match outcome {
            Ok((outputs, picks)) => {
                plan.target.metrics.record_success(took);
                Ok(InferResult {
                    version: plan.target,
                    outputs,
                    picks,
                })
            }
            Err(error) => {
                plan.target
                    .metrics
                    .record_failure(failure_reason(&error), took);
                Err(error)
            }
        }
    }

    fn plan(
        &self,
        model: &str,
        version: Option<&str>,
        keys: &dyn RequestKeys,
    ) -> Result<Plan, RouteError> {
        let table = self.table.load();
        let route = table
            .models
            .get(model)
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
        let by_deployment = matches!(version, None | Some(""));
        if let (true, Some(candidate)) = (by_deployment, &route.deployment.candidate) {
            if let Some(cand) = route.versions.get(&candidate.version) {
                let trial = Some(Arc::clone(&candidate.tracker));
                if pick_arm(candidate, keys) == Arm::Candidate {
                    return Ok(Plan {
                        target: Arc::clone(cand),
                        arm: Arm::Candidate,
                        trial,
                        shadow: None,
                    });
                }
                return Ok(Plan {
                    target: resolve_in(route, model, None)?,
                    arm: Arm::Stable,
                    trial,
                    shadow: (candidate.mode == CandidateMode::Shadow).then(|| Arc::clone(cand)),
                });
            }
        }
        Ok(Plan {
            target: resolve_in(route, model, version)?,
            arm: Arm::Direct,
            trial: None,
            shadow: None,
        })
    }
}

/// Validates against the answering version, starts the shadow copy if there is one, queues and
/// waits. The shadow never delays or changes the answer: it gets the stable outputs after they
/// exist, on its own task.
async fn run(
    target: &Arc<LoadedVersion>,
    request: InferRequest,
    shadow: Option<(&Arc<LoadedVersion>, &Arc<Tracker>)>,
    offload: &Offload,
    logged: Option<&Logged>,
) -> (Outcome, Option<(RecordBuffers, usize)>) {
    let (validated, picks) = match target.io.validate(request) {
        Ok(v) => v,
        Err(e) => return (Err(e.into()), None),
    };
    // A logged request's record gets its inputs' values now; the tensors go to the engine.
    let inputs = logged.and_then(|l| {
        l.monitor
            .input_values(&l.id, &validated.inputs, validated.rows)
            .map(|buffers| (buffers, validated.rows))
    });
    let shadow_tx = shadow.and_then(|(candidate, tracker)| {
        shadow::start(target, candidate, &validated, tracker, offload, logged)
    });
    let ticket = match target.scheduler.submit(validated) {
        Ok(t) => t,
        Err(e) => return (Err(e.into()), inputs),
    };
    let outputs = match ticket.wait().await {
        Ok(o) => o,
        Err(e) => return (Err(e.into()), inputs),
    };
    if let Some(tx) = shadow_tx {
        // Cloning tensors shares their buffers.
        let _ = tx.send(outputs.clone());
    }
    (Ok((outputs, picks)), inputs)
}

type Outcome = Result<(Vec<Tensor>, Vec<OutputPick>), InferError>;

/// A request being logged: where to, its id and when it arrived.
pub(crate) struct Logged {
    pub monitor: Arc<VersionMonitor>,
    pub id: String,
    pub time_us: i64,
}

/// Served output `i` (in the version's output order) out of the engine's outputs.
pub(crate) fn served_output<'a>(
    version: &LoadedVersion,
    outputs: &'a [Tensor],
    i: usize,
) -> Option<&'a Tensor> {
    version.io.output_index.get(i).and_then(|&j| outputs.get(j))
}

fn resolve_in(
    route: &ModelRoute,
    model: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedVersion>, RouteError> {
    match version {
        None | Some("") => route.stable().cloned().ok_or_else(|| RouteError::NotReady {
            model: model.to_string(),
            version: None,
            reason: not_ready_reason(route),
        }),
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

/// Canary split: by the sticky header's hash when there is one, else by a low-discrepancy
/// sequence (exact shares without a random number generator).
fn pick_arm(candidate: &Candidate, keys: &dyn RequestKeys) -> Arm {
    let CandidateMode::Canary {
        weight,
        sticky_header,
    } = &candidate.mode
    else {
        return Arm::Stable;
    };
    let u = match sticky_header.as_deref().and_then(|h| keys.header(h)) {
        Some(key) => unit_interval(fnv1a(key)),
        None => {
            let n = candidate.tracker.picks.fetch_add(1, Ordering::Relaxed);
            unit_interval(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
    };
    if u < *weight {
        Arm::Candidate
    } else {
        Arm::Stable
    }
}

fn unit_interval(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a, finished with a multiply-xorshift so nearby keys spread over the interval. Stable
/// across builds and platforms, so a sticky caller keeps its side across restarts.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
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
