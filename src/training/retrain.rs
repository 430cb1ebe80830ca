//! Automatic retraining: a model's `[retrain]` policy, applied to every drift window of its
//! stable version as the monitor publishes it. When violations that count (the configured
//! features and statistics) persist for `consecutive_windows` windows and at least
//! `min_labelled_rows` rows have had feedback since the last training, a job trains on the most
//! recent labelled rows; the gate, the publish and the canary (whose criteria may include live
//! accuracy) do the rest. A cooldown and a daily cap bound how often; every decision is logged,
//! counted in `cairn_retrain_decisions_total` and shown by `GET /v2/training/jobs` and the
//! status page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_monitor::report::{DriftReport, PublishedDrift};
use parking_lot::Mutex;
use serde::Serialize;

use super::jobs::{JobError, Jobs, Narrow, Trigger};
use crate::config::RetrainConfig;
use crate::lease::{Held, Leases};
use crate::metrics::Metrics;
use crate::monitoring::MonitorHub;
use crate::routing::Router;

/// How often the policy looks for new windows.
pub const PERIOD: Duration = Duration::from_secs(1);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// One model's retraining state, as the API shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetrainState {
    /// Consecutive windows of the stable version with a counted violation.
    pub consecutive: u32,
    pub needed: u32,
    /// Rows with feedback since the last automatic training (or since the server started).
    pub labelled_since: u64,
    pub min_labelled_rows: u64,
    /// The start of the first drifted window of the current streak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_from: Option<String>,
    /// Rows with feedback received since that window was seen.
    pub labelled_since_drift: u64,
    pub min_labelled_rows_since_drift: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_started: Option<String>,
    pub started_last_24h: usize,
    pub max_per_day: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
    /// With replicas (`deployment_state`): who holds this model's retraining lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(skip)]
    lease_held: Option<Held>,
    #[serde(skip)]
    lease_looked: Option<SystemTime>,
    #[serde(skip)]
    version: u64,
    /// The `to` of the last window looked at.
    #[serde(skip)]
    seen_to: Option<String>,
    #[serde(skip)]
    labelled_at_start: u64,
    #[serde(skip)]
    labelled_at_drift: u64,
    #[serde(skip)]
    starts: VecDeque<SystemTime>,
}

/// What the policy says once a streak is long enough.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Start,
    /// Not now: the metric label and the reason.
    Hold(&'static str, String),
}

/// The policy, as a pure function of the state (for the tests: cooldown and the daily cap).
pub fn verdict(
    config: &RetrainConfig,
    state: &RetrainState,
    now: SystemTime,
    job_running: bool,
    candidate_on_trial: bool,
) -> Verdict {
    if job_running {
        return Verdict::Hold("busy", "a training job of this model is running".into());
    }
    if candidate_on_trial {
        return Verdict::Hold(
            "candidate",
            "a candidate is on trial; its rollout decides first".into(),
        );
    }
    if state.labelled_since < config.min_labelled_rows {
        return Verdict::Hold(
            "labels",
            format!(
                "{} rows with feedback since the last training, fewer than min_labelled_rows {}",
                state.labelled_since, config.min_labelled_rows
            ),
        );
    }
    if state.labelled_since_drift < config.min_labelled_rows_since_drift {
        return Verdict::Hold(
            "labels",
            format!(
                "{} rows with feedback since the drift began (window from {}), fewer than \
                 min_labelled_rows_since_drift {}",
                state.labelled_since_drift,
                state.drift_from.as_deref().unwrap_or("?"),
                config.min_labelled_rows_since_drift
            ),
        );
    }
    if let Some(last) = state.starts.back() {
        let since = now.duration_since(*last).unwrap_or_default();
        if since < Duration::from_secs(config.cooldown_s) {
            return Verdict::Hold(
                "cooldown",
                format!(
                    "the last training started {} s ago; cooldown_s is {}",
                    since.as_secs(),
                    config.cooldown_s
                ),
            );
        }
    }
    let today = state
        .starts
        .iter()
        .filter(|t| now.duration_since(**t).unwrap_or_default() < DAY)
        .count();
    if today >= config.max_per_day as usize {
        return Verdict::Hold(
            "daily_cap",
            format!(
                "{today} trainings started in the last 24 hours; max_per_day is {}",
                config.max_per_day
            ),
        );
    }
    Verdict::Start
}

/// Whether a drift report has a violation that counts.
pub fn counts(report: &DriftReport, config: &RetrainConfig) -> Vec<String> {
    let mut hits = Vec::new();
    for map in [&report.features, &report.outputs] {
        for (name, drift) in map {
            if !config.features.is_empty() && !config.features.contains(name) {
                continue;
            }
            let counted: Vec<&str> = drift
                .violations
                .iter()
                .map(|s| s.name())
                .filter(|s| {
                    config.statistics.is_empty() || config.statistics.iter().any(|c| c == s)
                })
                .collect();
            if !counted.is_empty() {
                hits.push(format!("{name} ({})", counted.join(", ")));
            }
        }
    }
    hits
}

/// The policy of every model with `[retrain] enabled`.
pub struct Retrainer {
    router: Arc<Router>,
    monitors: Arc<MonitorHub>,
    jobs: Arc<Jobs>,
    metrics: Metrics,
    states: Mutex<BTreeMap<String, RetrainState>>,
    /// With replicas: one of them at a time runs a model's policy and training jobs.
    leases: Option<Arc<Leases>>,
}

/// How long a replica that does not hold a lease waits before looking again.
const LEASE_LOOK: Duration = Duration::from_secs(5);

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Retrainer {
    pub fn new(
        router: Arc<Router>,
        monitors: Arc<MonitorHub>,
        jobs: Arc<Jobs>,
        metrics: Metrics,
        leases: Option<Arc<Leases>>,
    ) -> Arc<Retrainer> {
        Arc::new(Retrainer {
            router,
            monitors,
            jobs,
            metrics,
            states: Mutex::new(BTreeMap::new()),
            leases,
        })
    }

    /// The replica holding `model`'s retraining lease when it is another one (as last seen):
    /// training requests for the model belong there.
    pub fn held_elsewhere(&self, model: &str) -> Option<String> {
        match self.states.lock().get(model)?.lease_held.as_ref()? {
            Held::Elsewhere(r) => Some(r.holder.clone()),
            Held::Here(_) => None,
        }
    }

    /// Starts the automatic job a streak asked for, and records how that went.
    fn start_job(
        &self,
        model: &str,
        config: &RetrainConfig,
        state: &mut RetrainState,
        now: SystemTime,
        labelled: u64,
        reason: &str,
    ) {
        match self.jobs.start(
            model,
            Trigger::Auto,
            reason,
            &Narrow {
                last_rows: Some(config.recent_rows),
                from: state
                    .drift_from
                    .clone()
                    .filter(|_| config.train_since_drift),
            },
        ) {
            Ok(job) => {
                self.metrics.record_retrain_decision(model, "started");
                tracing::info!(model = %model, job = %job.id, "retraining started: {reason}");
                state.consecutive = 0;
                state.starts.push_back(now);
                while state.starts.len() > 64 {
                    state.starts.pop_front();
                }
                state.labelled_at_start = labelled;
                state.labelled_since = 0;
                state.drift_from = None;
                state.labelled_since_drift = 0;
                state.last_started = Some(humantime::format_rfc3339_seconds(now).to_string());
                state.last_job = Some(job.id);
                state.last_decision = Some(format!("started: {reason}"));
            }
            Err(e) => {
                let label = match e {
                    JobError::Busy(_) | JobError::Conflict(_) => "busy",
                    _ => "error",
                };
                self.metrics.record_retrain_decision(model, label);
                tracing::warn!(model = %model, error = %e, "retraining could not start");
                state.last_decision = Some(format!("could not start: {e}"));
            }
        }
    }

    /// Takes, renews or looks at the lease of every model whose policy is on, outside the
    /// states' lock (a store call may take seconds): a holder renews once half its time is
    /// gone, a replica that does not hold it looks again every `LEASE_LOOK`.
    fn look_at_leases(&self, models: &[String], now: SystemTime) {
        let Some(leases) = &self.leases else { return };
        let now_ms = millis(now);
        for model in models {
            let due = match self.states.lock().get(model) {
                Some(s) => match (&s.lease_held, s.lease_looked) {
                    (Some(Held::Here(r)), _) => {
                        r.expires_ms.saturating_sub(now_ms)
                            < crate::lease::TTL.as_millis() as u64 / 2
                    }
                    (Some(Held::Elsewhere(_)), Some(looked)) => {
                        now.duration_since(looked).unwrap_or_default() >= LEASE_LOOK
                    }
                    _ => true,
                },
                None => true,
            };
            if !due {
                continue;
            }
            let looked = tokio::runtime::Handle::current().block_on(leases.acquire(model, now_ms));
            let mut states = self.states.lock();
            let state = states.entry(model.clone()).or_default();
            state.lease_looked = Some(now);
            match looked {
                Ok(held) => {
                    if let Held::Here(r) = &held {
                        if !matches!(&state.lease_held, Some(Held::Here(_))) {
                            tracing::info!(model = %model, generation = r.generation,
                                "this replica holds the retraining lease");
                        }
                    }
                    state.lease = Some(match &held {
                        Held::Here(r) => format!(
                            "held here ({}, generation {})",
                            leases.holder(),
                            r.generation
                        ),
                        Held::Elsewhere(r) => format!(
                            "held by {} (generation {}); this replica ({}) runs no retraining \
                             of the model",
                            r.holder,
                            r.generation,
                            leases.holder()
                        ),
                    });
                    state.lease_held = Some(held);
                }
                Err(e) => {
                    // Unsure who holds it: act as if another replica did, until the store
                    // answers (a holder keeps its lease until it expires).
                    let still_here = matches!(&state.lease_held,
                        Some(Held::Here(r)) if r.expires_ms > now_ms);
                    if !still_here {
                        state.lease_held = None;
                    }
                    state.lease = Some(format!("the lease store did not answer: {e}"));
                    tracing::warn!(model = %model, error = %e, "cannot look at the retraining lease");
                }
            }
        }
    }

    /// Whether this replica runs `model`'s policy now: always without replicas, else while it
    /// holds the lease.
    fn runs_here(&self, state: &RetrainState, now: SystemTime) -> bool {
        self.leases.is_none()
            || matches!(&state.lease_held, Some(Held::Here(r)) if r.expires_ms > millis(now))
    }

    /// Every watched model's state.
    pub fn states(&self) -> BTreeMap<String, RetrainState> {
        self.states.lock().clone()
    }

    /// Looks at new windows every `PERIOD` until `stop`, on the blocking pool (starting a job
    /// reads its config file).
    pub async fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        crate::periodic::every_blocking(PERIOD, crate::periodic::First::Now, stop, move || {
            self.step(SystemTime::now())
        })
        .await
    }

    /// One look at every model.
    pub fn step(&self, now: SystemTime) {
        let table = self.router.snapshot();
        let watched: Vec<String> = table
            .models
            .iter()
            .filter(|(_, r)| r.stable().is_some_and(|s| s.config.retrain.enabled))
            .map(|(m, _)| m.clone())
            .collect();
        self.look_at_leases(&watched, now);
        let mut states = self.states.lock();
        states.retain(|m, _| {
            table
                .models
                .get(m)
                .and_then(|r| r.stable())
                .is_some_and(|s| s.config.retrain.enabled)
        });
        for (model, route) in &table.models {
            let Some(stable) = route.stable() else {
                continue;
            };
            let config = &stable.config.retrain;
            if !config.enabled {
                continue;
            }
            let Some(monitor) = self.monitors.get(model) else {
                continue;
            };
            let labelled = monitor.labelled_rows();
            let state = states.entry(model.clone()).or_default();
            state.needed = config.consecutive_windows;
            state.min_labelled_rows = config.min_labelled_rows;
            state.max_per_day = config.max_per_day;
            state.labelled_since = labelled.saturating_sub(state.labelled_at_start);
            state.min_labelled_rows_since_drift = config.min_labelled_rows_since_drift;
            state.labelled_since_drift = match state.drift_from {
                Some(_) => labelled.saturating_sub(state.labelled_at_drift),
                None => 0,
            };
            state.started_last_24h = state
                .starts
                .iter()
                .filter(|t| now.duration_since(**t).unwrap_or_default() < DAY)
                .count();
            if state.version != stable.version {
                // A new stable version: its own windows count from zero.
                state.version = stable.version;
                state.consecutive = 0;
            }
            let reports = monitor
                .drift(Some(stable.version), usize::MAX)
                .remove(&stable.version)
                .unwrap_or_default();
            if !self.runs_here(state, now) {
                // Another replica decides; its windows are not this one's to act on later.
                state.seen_to = reports
                    .last()
                    .map(|r| r.report.window.to.clone())
                    .or(state.seen_to.take());
                state.consecutive = 0;
                continue;
            }
            let fresh: Vec<&PublishedDrift> = reports
                .iter()
                .map(|r| r.report.as_ref())
                .filter(|r| {
                    state
                        .seen_to
                        .as_deref()
                        .is_none_or(|seen| r.window.to.as_str() > seen)
                })
                .collect();
            for published in fresh {
                state.seen_to = Some(published.window.to.clone());
                let hits = counts(&published.report, config);
                if hits.is_empty() {
                    state.consecutive = 0;
                    state.drift_from = None;
                    state.labelled_since_drift = 0;
                    continue;
                }
                if state.consecutive == 0 || state.drift_from.is_none() {
                    state.drift_from = Some(published.window.from.clone());
                    state.labelled_at_drift = labelled;
                    state.labelled_since_drift = 0;
                }
                state.consecutive += 1;
                if state.consecutive < config.consecutive_windows {
                    continue;
                }
                let reason = format!(
                    "drift in {} consecutive windows of version {} (last: {}); {} labelled rows",
                    state.consecutive,
                    stable.version,
                    hits.join("; "),
                    state.labelled_since
                );
                let candidate = route.deployment.candidate.is_some();
                match verdict(config, state, now, self.jobs.running_for(model), candidate) {
                    Verdict::Hold(label, why) => {
                        self.metrics.record_retrain_decision(model, label);
                        tracing::info!(model = %model, decision = label, "retraining held: {why}");
                        state.last_decision = Some(format!("held ({label}): {why}"));
                    }
                    Verdict::Start => self.start_job(model, config, state, now, labelled, &reason),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> RetrainConfig {
        RetrainConfig {
            enabled: true,
            min_labelled_rows: 100,
            cooldown_s: 600,
            max_per_day: 2,
            ..RetrainConfig::default()
        }
    }

    #[test]
    fn cooldown_and_the_daily_cap_hold_a_retrain() {
        let c = config();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = RetrainState {
            labelled_since: 50,
            ..RetrainState::default()
        };
        assert!(matches!(
            verdict(&c, &s, t0, false, false),
            Verdict::Hold("labels", _)
        ));
        s.labelled_since = 100;
        assert_eq!(verdict(&c, &s, t0, false, false), Verdict::Start);
        assert!(matches!(
            verdict(&c, &s, t0, true, false),
            Verdict::Hold("busy", _)
        ));
        assert!(matches!(
            verdict(&c, &s, t0, false, true),
            Verdict::Hold("candidate", _)
        ));
        s.starts.push_back(t0);
        let later = |secs| t0 + Duration::from_secs(secs);
        assert!(matches!(
            verdict(&c, &s, later(599), false, false),
            Verdict::Hold("cooldown", _)
        ));
        assert_eq!(verdict(&c, &s, later(600), false, false), Verdict::Start);
        s.starts.push_back(later(600));
        // Two starts within 24 hours: the cap holds, whatever the cooldown says.
        assert!(matches!(
            verdict(&c, &s, later(5000), false, false),
            Verdict::Hold("daily_cap", _)
        ));
        // A day after the first, one slot is free again.
        assert_eq!(
            verdict(&c, &s, later(24 * 3600), false, false),
            Verdict::Start
        );
    }

    #[test]
    fn labels_from_after_the_drift_can_be_required() {
        let c = RetrainConfig {
            min_labelled_rows_since_drift: 40,
            ..config()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = RetrainState {
            labelled_since: 500,
            drift_from: Some("2026-12-07T08:00:00Z".into()),
            labelled_since_drift: 39,
            ..RetrainState::default()
        };
        match verdict(&c, &s, t0, false, false) {
            Verdict::Hold("labels", why) => assert!(
                why.contains(
                    "39 rows with feedback since the drift began (window from \
                     2026-12-07T08:00:00Z), fewer than min_labelled_rows_since_drift 40"
                ),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        s.labelled_since_drift = 40;
        assert_eq!(verdict(&c, &s, t0, false, false), Verdict::Start);
    }

    #[test]
    fn only_configured_features_and_statistics_count() {
        let report: DriftReport = serde_json::from_value(json!({
            "rows": 100,
            "features": {
                "a": {"kind": "numeric", "error": "", "drifted": true, "violations": ["ks", "psi"]},
                "b": {"kind": "numeric", "error": "", "drifted": true,
                      "violations": ["missing_rate_increase"]},
                "c": {"kind": "numeric", "error": "", "drifted": false, "violations": []},
            },
            "outputs": {"output.label": {"kind": "categorical", "error": "", "drifted": true,
                                         "violations": ["chi2"]}},
            "drifted": ["a", "b", "output.label"],
            "missing_in_baseline": [],
            "missing_in_window": [],
            "thresholds": {"comparisons": 4, "alpha_corrected": 0.0025},
        }))
        .unwrap();
        let mut c = config();
        assert_eq!(counts(&report, &c).len(), 3);
        c.features = vec!["b".into(), "c".into()];
        assert_eq!(counts(&report, &c), vec!["b (missing_rate_increase)"]);
        c.features.clear();
        c.statistics = vec!["ks".into(), "chi2".into()];
        assert_eq!(counts(&report, &c), vec!["a (ks)", "output.label (chi2)"]);
    }
}
