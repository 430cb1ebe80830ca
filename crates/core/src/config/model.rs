//! A model's `config.toml`: parsed into a typed [`ModelConfig`] and checked field by field.
//!
//! The fields mirror Triton's model configuration where Triton has one (`max_batch_size`,
//! `version_policy`, `input`/`output`, `dynamic_batching`), so a Triton user recognises them.
//! Everything is optional: a model directory with no `config.toml` serves with the defaults and
//! the inputs and outputs read from its ONNX file.

use std::num::NonZeroU32;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use crate::tensor::DataType;

/// Whether a model's tensors carry a leading batch dimension, settled once from
/// `max_batch_size` so that nothing downstream asks `max_batch_size > 0` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchShape {
    /// No batch dimension: `dims` are the full shapes and each request is one run.
    None,
    /// A leading batch dimension of 1 to `max` rows, left out of `dims`.
    Rows { max: usize },
}

impl BatchShape {
    pub fn of(max_batch_size: u32) -> BatchShape {
        match max_batch_size {
            0 => BatchShape::None,
            max => BatchShape::Rows { max: max as usize },
        }
    }

    pub fn is_batched(self) -> bool {
        matches!(self, BatchShape::Rows { .. })
    }

    /// The wire's form (Triton's `max_batch_size`): 0 for none.
    pub fn max_batch_size(self) -> usize {
        match self {
            BatchShape::None => 0,
            BatchShape::Rows { max } => max,
        }
    }
}

/// The largest `max_batch_size` accepted; larger batches belong to offline jobs, not a server.
pub const MAX_BATCH_SIZE_LIMIT: u32 = 1 << 16;
/// Default bound of a model version's request queue when `config.toml` sets none.
pub const DEFAULT_MAX_QUEUE_SIZE: u32 = 1024;
/// Most runs of each warm-up request: enough to warm any cache, few enough that a load cannot
/// hold the repository for long.
pub const MAX_WARMUP_COUNT: u32 = 1000;
/// Most warm-up request files.
pub const MAX_WARMUP_REQUESTS: usize = 64;
/// Most engine workers per version.
pub const MAX_INSTANCES: u32 = 256;

/// The whole of a model's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Must equal the directory name when given.
    #[serde(default)]
    pub name: Option<String>,
    /// The model file's format; only `onnx` exists today. Which engine runs it is `[engine]`.
    #[serde(default)]
    pub backend: Backend,
    /// Which engine runs the model, and how.
    #[serde(default)]
    pub engine: EngineConfig,
    /// 0: the model does not batch and `dims` are full shapes. N > 0: every input and output has
    /// an implicit leading batch dimension of at most N rows, left out of `dims`.
    #[serde(default)]
    pub max_batch_size: u32,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Engine workers per loaded version; each runs one batch at a time on its own thread.
    #[serde(default = "one")]
    pub instances: NonZeroU32,
    /// The file inside each version directory.
    #[serde(default = "default_model_filename")]
    pub default_model_filename: String,
    /// Inputs; when left out they are read from the model file, when given they are checked
    /// against it at load.
    #[serde(default)]
    pub input: Vec<TensorConfig>,
    /// Outputs, as for `input`. When given, only the listed outputs are served.
    #[serde(default)]
    pub output: Vec<TensorConfig>,
    /// Server-side batching of separate requests; absent means each request runs alone.
    #[serde(default)]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Bound of the request queue and default timeout, which apply with or without batching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePolicy>,
    /// Requests run through every new version before it serves; absent, one generated batch of
    /// ones is run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// How new versions reach traffic, and when a candidate is promoted or rolled back.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// The prediction log, drift windows and live quality.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// Retraining when drift persists.
    #[serde(default, skip_serializing_if = "RetrainConfig::is_off")]
    pub retrain: RetrainConfig,
}

/// `[retrain]`: when drift violations persist for `consecutive_windows` windows of the stable
/// version and at least `min_labelled_rows` rows have feedback since the last training, the
/// server trains on the most recent labelled rows, gates, publishes, and the new version reaches
/// traffic as `[rollout]` says (a canary whose criteria may include live accuracy).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    pub enabled: bool,
    /// The training config; default `<train_config_dir>/<model>.toml`.
    pub config: Option<String>,
    /// Consecutive drift windows with a counted violation before retraining.
    pub consecutive_windows: u32,
    /// Features (or `output.<name>`) whose violations count; empty: every one.
    pub features: Vec<String>,
    /// Statistics whose violations count (`ks`, `psi`, `chi2`, ...); empty: every one.
    pub statistics: Vec<String>,
    /// Rows with feedback since the last training, at least.
    pub min_labelled_rows: u64,
    /// Rows with feedback received since the first drifted window of the streak was seen, at
    /// least: labels from after the change, not only from before it. 0: not required.
    pub min_labelled_rows_since_drift: u64,
    /// Train only on rows predicted from the start of the first drifted window of the streak on,
    /// so that the new version (and its baseline) learns the traffic after the change.
    pub train_since_drift: bool,
    /// Train on at most this many of the most recent labelled rows.
    pub recent_rows: u64,
    /// Seconds between the starts of two automatic trainings.
    pub cooldown_s: u64,
    /// Automatic trainings started in any 24 hours, at most.
    pub max_per_day: u32,
    /// How a version this server trained (by `[retrain]` or `POST .../train`) is put on trial.
    pub trial: RetrainTrial,
}

/// `[retrain] trial`: how a version the server trained reaches traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrainTrial {
    /// Where `[rollout] max_accuracy_drop` is set: a shadow beside the stable version, judged
    /// on pairs of answers to the same rows by the sequential test (stated error rates, fewer
    /// labels); without it, as `[rollout]` says.
    #[default]
    Paired,
    /// As `[rollout] on_new_version` says, like any new version.
    Rollout,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        RetrainConfig {
            enabled: false,
            config: None,
            consecutive_windows: 3,
            features: Vec::new(),
            statistics: Vec::new(),
            min_labelled_rows: 500,
            min_labelled_rows_since_drift: 0,
            train_since_drift: false,
            recent_rows: 5000,
            cooldown_s: 3600,
            max_per_day: 4,
            trial: RetrainTrial::Paired,
        }
    }
}

/// The statistics `[retrain] statistics` may name.
pub const DRIFT_STATISTICS: [&str; 8] = [
    "psi",
    "js",
    "ks",
    "chi2",
    "wasserstein_norm",
    "out_of_range_rate",
    "unseen_rate",
    "missing_rate_increase",
];

impl RetrainConfig {
    fn is_off(&self) -> bool {
        *self == RetrainConfig::default()
    }

    /// Checks ranges; the error names the key under `retrain`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((format!("retrain.{key}"), reason));
        if self.consecutive_windows == 0 {
            return fail("consecutive_windows", "must be at least 1".into());
        }
        if self.recent_rows == 0 || self.recent_rows > 20_000_000 {
            return fail("recent_rows", "must be 1 to 20000000".into());
        }
        if self.max_per_day == 0 {
            return fail(
                "max_per_day",
                "must be at least 1 (or set enabled = false)".into(),
            );
        }
        for s in &self.statistics {
            if !DRIFT_STATISTICS.contains(&s.as_str()) {
                return fail(
                    "statistics",
                    format!("'{s}' is not one of {}", DRIFT_STATISTICS.join(", ")),
                );
            }
        }
        if let Some(c) = &self.config {
            if c.is_empty() {
                return fail("config", "is empty".into());
            }
        }
        Ok(())
    }
}

/// `[monitoring]`: what of a model's traffic is logged and how it is watched.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Log predictions and watch drift. Off by default: logging costs disk and a little CPU.
    pub enabled: bool,
    /// Share of requests logged (0 to 1), spread evenly over the traffic.
    pub sample_rate: f64,
    /// Inputs whose values are logged and watched; empty means every input.
    pub inputs: Vec<String>,
    /// Outputs logged and watched; empty means every output.
    pub outputs: Vec<String>,
    /// Names of the input features, in order (the elements of the logged inputs, row by row);
    /// empty: the version's `baseline.json` names them (its `feature_order`), else `<input>[i]`,
    /// or the input's name for a one-column input.
    pub features: Vec<String>,
    /// Features compared as categories (BYTES inputs always are).
    pub categorical: Vec<String>,
    /// Features (and outputs) that get Prometheus gauges; the report holds them all.
    pub max_metric_features: u32,
    /// A drift window closes after this many logged rows...
    pub window_rows: u64,
    /// ... or after this many seconds, when set (0: by rows only).
    pub window_seconds: u64,
    /// Without a `baseline.json`, take the baseline from the first this many logged rows of each
    /// version (0: no baseline, no drift report).
    pub baseline_rows: u64,
    /// The output that holds the prediction feedback is compared with; absent: the first
    /// integer or string output (a class label), else the first one-column float output.
    pub prediction: Option<String>,
    /// The output with class scores, for ROC AUC of a binary classifier (its column 1).
    pub score: Option<String>,
    /// Feedback rows per quality window.
    pub quality_window_rows: u64,
    /// When a feature counts as drifted.
    pub thresholds: Thresholds,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            enabled: false,
            sample_rate: 1.0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            features: Vec::new(),
            categorical: Vec::new(),
            max_metric_features: 32,
            window_rows: 1000,
            window_seconds: 0,
            baseline_rows: 0,
            prediction: None,
            score: None,
            quality_window_rows: 1000,
            thresholds: Thresholds::default(),
        }
    }
}

/// The most rows a drift window may hold: a window is kept in memory until it closes.
pub const MAX_WINDOW_ROWS: u64 = 1_000_000;

/// When a feature counts as drifted. Read from a model's `config.toml`
/// (`[monitoring.thresholds]`); every field has a default, and a threshold is turned off by
/// leaving it out (for those off by default) or setting it to `false`.
///
/// Why these defaults: the two hypothesis tests — KS for numeric features, chi-squared for
/// categorical ones — carry the false-positive control. Each is run at `alpha / m`, `m` being the
/// number of features and outputs compared (Bonferroni), so the chance that a window drawn from
/// the baseline's distribution flags *any* feature through a test is at most `alpha` (1% by
/// default), however many features a model has. PSI > 0.2 is the usual rule of thumb for a
/// significant population shift; unlike a p-value it does not shrink with sample size, so it also
/// bounds what large windows flag to shifts big enough to matter. The other statistics are
/// descriptive, with no scale that fits every feature, so they are off until a model sets them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// PSI above this is a violation. Default 0.2.
    #[serde(deserialize_with = "threshold")]
    pub psi: Option<f64>,
    /// Family-wise significance of the KS and chi-squared tests: a test is violated when its
    /// p-value is below `alpha / m`. Default 0.01.
    pub alpha: f64,
    /// Jensen–Shannon distance (base 2, in [0, 1]) above this. Default off.
    #[serde(deserialize_with = "threshold")]
    pub js: Option<f64>,
    /// Wasserstein distance over the baseline's standard deviation above this. Default off.
    #[serde(deserialize_with = "threshold")]
    pub wasserstein_norm: Option<f64>,
    /// Share of window values outside the baseline's [min, max] above this. Default off.
    #[serde(deserialize_with = "threshold")]
    pub out_of_range_rate: Option<f64>,
    /// Share of window rows in categories the baseline never saw above this. Default off.
    #[serde(deserialize_with = "threshold")]
    pub unseen_rate: Option<f64>,
    /// Window missing rate minus baseline missing rate above this. Default off.
    #[serde(deserialize_with = "threshold")]
    pub missing_rate_increase: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            psi: Some(0.2),
            alpha: 0.01,
            js: None,
            wasserstein_norm: None,
            out_of_range_rate: None,
            unseen_rate: None,
            missing_rate_increase: None,
        }
    }
}

/// A threshold: a number, or `false`/`null` for off (TOML has no null).
fn threshold<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(f64),
        Switch(bool),
    }
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Switch(false)) => Ok(None),
        Some(Value::Number(v)) => Ok(Some(v)),
        Some(Value::Switch(true)) => Err(serde::de::Error::custom(
            "a threshold is a number, or false to turn it off",
        )),
    }
}

/// A threshold that makes no sense.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("alpha must be in (0, 1], not {0}")]
    Alpha(f64),
    #[error("threshold `{name}` must be a finite number >= 0, not {value}")]
    Threshold { name: &'static str, value: f64 },
}

impl Thresholds {
    /// Checks that `alpha` is in (0, 1] and every threshold set is finite and non-negative.
    /// [`drift`] accepts any value (a NaN threshold is never violated); this is for config
    /// loading.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(ThresholdError::Alpha(self.alpha));
        }
        let named = [
            ("psi", self.psi),
            ("js", self.js),
            ("wasserstein_norm", self.wasserstein_norm),
            ("out_of_range_rate", self.out_of_range_rate),
            ("unseen_rate", self.unseen_rate),
            ("missing_rate_increase", self.missing_rate_increase),
        ];
        for (name, value) in named {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(ThresholdError::Threshold { name, value });
            }
        }
        Ok(())
    }
}

impl MonitoringConfig {
    /// Checks ranges; the error names the key under `monitoring`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((format!("monitoring.{key}"), reason));
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return fail(
                "sample_rate",
                format!("{} is not between 0 and 1", self.sample_rate),
            );
        }
        if self.window_rows == 0 || self.window_rows > MAX_WINDOW_ROWS {
            return fail(
                "window_rows",
                format!(
                    "{} is not between 1 and {MAX_WINDOW_ROWS}",
                    self.window_rows
                ),
            );
        }
        if self.baseline_rows > MAX_WINDOW_ROWS {
            return fail(
                "baseline_rows",
                format!(
                    "{} exceeds the limit of {MAX_WINDOW_ROWS}",
                    self.baseline_rows
                ),
            );
        }
        if self.quality_window_rows == 0 || self.quality_window_rows > MAX_WINDOW_ROWS {
            return fail(
                "quality_window_rows",
                format!(
                    "{} is not between 1 and {MAX_WINDOW_ROWS}",
                    self.quality_window_rows
                ),
            );
        }
        if let Err(e) = self.thresholds.validate() {
            let key = match &e {
                ThresholdError::Alpha(_) => "alpha",
                ThresholdError::Threshold { name, .. } => name,
            };
            return fail(&format!("thresholds.{key}"), e.to_string());
        }
        for (i, name) in self.features.iter().enumerate() {
            if name.is_empty() || self.features[..i].contains(name) {
                return fail(
                    &format!("features[{i}]"),
                    format!("'{name}' is empty or listed twice"),
                );
            }
        }
        Ok(())
    }
}

/// Warm-up requests: V2 JSON request bodies, each a file looked up in the version directory,
/// then in the model directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    pub requests: Vec<String>,
    /// How many times each request is run.
    #[serde(default = "one")]
    pub count: NonZeroU32,
}

impl Warmup {
    /// Checks the limits, and that every request file stays inside the model directory.
    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((key.to_string(), reason));
        if self.requests.is_empty() {
            return fail(
                "warmup.requests",
                "must list at least one request file".into(),
            );
        }
        if self.requests.len() > MAX_WARMUP_REQUESTS {
            return fail(
                "warmup.requests",
                format!(
                    "lists {} files, more than the limit of {MAX_WARMUP_REQUESTS}",
                    self.requests.len()
                ),
            );
        }
        if self.count.get() > MAX_WARMUP_COUNT {
            return fail(
                "warmup.count",
                format!("{} exceeds the limit of {MAX_WARMUP_COUNT}", self.count),
            );
        }
        if let Some(bad) = self.requests.iter().find(|r| {
            r.is_empty()
                || Path::new(r)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
        }) {
            return fail(
                "warmup.requests",
                format!("'{bad}' must be a relative path inside the model directory"),
            );
        }
        Ok(())
    }
}

/// What happens when a new, higher version loads while another serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNewVersion {
    /// Blue/green: the new version takes all traffic at once; the old one stays loaded while the
    /// version policy keeps it, ready to switch back to.
    #[default]
    Replace,
    /// The new version becomes a canary with `canary_weight` of the traffic.
    Canary,
    /// The new version receives a copy of every request; only the old one answers.
    Shadow,
}

/// Rollout behaviour and the criteria that promote or roll back a candidate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    pub on_new_version: OnNewVersion,
    /// Share of traffic a canary started automatically gets (0 to 1).
    pub canary_weight: f64,
    /// Header whose value pins a caller to one side of a canary.
    pub sticky_header: Option<String>,
    /// Candidate requests (canary) or comparisons (shadow) before anything is decided.
    pub min_requests: u64,
    /// Largest share of candidate requests that may fail.
    pub max_error_rate: f64,
    /// Largest candidate p99 latency as a multiple of the stable version's.
    pub max_p99_ratio: f64,
    /// Smallest share of compared rows whose top class equals the stable version's (shadow).
    pub min_agreement: f64,
    /// Largest mean absolute difference of floating-point outputs from the stable version's
    /// (shadow); absent means not checked.
    pub max_mean_abs_diff: Option<f64>,
    /// Promote a candidate that meets every criterion after `min_requests`.
    pub auto_promote: bool,
    /// Roll back a candidate that misses one.
    pub auto_rollback: bool,
    /// Live quality (canary): the candidate's accuracy on rows with feedback may fall at most
    /// this far below the stable version's over the same trial; absent means not checked.
    pub max_accuracy_drop: Option<f64>,
    /// Labelled candidate rows (and as many stable ones) needed before accuracy decides.
    pub min_labelled: u64,
    /// How live accuracy decides: `threshold` compares the two accuracies once `min_labelled`
    /// rows of each arm are in (no stated error rate); `sequential` waits until an anytime-valid
    /// interval for the difference decides, so that a candidate worse by `max_accuracy_drop`
    /// is promoted, and one better by it rolled back, each with probability at most `alpha`.
    pub accuracy_test: AccuracyTest,
    /// The error rate of each wrong decision of the sequential test; also what the latency
    /// test (Mann-Whitney over the trial, its k-th run at `alpha / 2^k`) spends over a trial
    /// before a p99 ratio past `max_p99_ratio` rolls a candidate back.
    pub alpha: f64,
}

/// How a canary's live accuracy is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccuracyTest {
    #[default]
    Threshold,
    Sequential,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            on_new_version: OnNewVersion::Replace,
            canary_weight: 0.1,
            sticky_header: None,
            min_requests: 200,
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
            min_agreement: 0.95,
            max_mean_abs_diff: None,
            auto_promote: true,
            auto_rollback: true,
            max_accuracy_drop: None,
            min_labelled: 100,
            accuracy_test: AccuracyTest::Threshold,
            alpha: 0.05,
        }
    }
}

impl RolloutConfig {
    /// Checks ranges; the error names the key under `rollout`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fraction = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((
                    format!("rollout.{key}"),
                    format!("{v} is not between 0 and 1"),
                ))
            }
        };
        fraction("canary_weight", self.canary_weight)?;
        fraction("max_error_rate", self.max_error_rate)?;
        fraction("min_agreement", self.min_agreement)?;
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio > 0.0) {
            return Err((
                "rollout.max_p99_ratio".into(),
                format!("{} is not a positive number", self.max_p99_ratio),
            ));
        }
        if let Some(d) = self.max_mean_abs_diff {
            if !(d.is_finite() && d >= 0.0) {
                return Err((
                    "rollout.max_mean_abs_diff".into(),
                    format!("{d} is not a non-negative number"),
                ));
            }
        }
        if self.min_requests == 0 {
            return Err(("rollout.min_requests".into(), "must be at least 1".into()));
        }
        if let Some(d) = self.max_accuracy_drop {
            fraction("max_accuracy_drop", d)?;
        }
        if self.min_labelled == 0 {
            return Err(("rollout.min_labelled".into(), "must be at least 1".into()));
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.5) {
            return Err((
                "rollout.alpha".into(),
                format!("{} is not in (0, 0.5]", self.alpha),
            ));
        }
        if self.accuracy_test == AccuracyTest::Sequential {
            match self.max_accuracy_drop {
                Some(m) if m > 0.0 => {}
                _ => {
                    return Err((
                        "rollout.accuracy_test".into(),
                        "\"sequential\" needs max_accuracy_drop > 0: the margin it decides by"
                            .into(),
                    ))
                }
            }
        }
        if let Some(h) = &self.sticky_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((
                    "rollout.sticky_header".into(),
                    format!("'{h}' is not a valid HTTP header name"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Onnx,
}

/// `[engine]`: the engine that runs a model's versions.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default)]
    pub kind: EngineKind,
    /// Threads one engine call may use. Parallelism across requests comes from `instances`.
    #[serde(default = "one")]
    pub threads: NonZeroU32,
    /// When the chosen engine cannot take the model (its library is missing, an operator it
    /// lacks): `refuse` the load with the reason, or fall back to the `cpu` engine (tract) with a
    /// log line and `cairn_engine_fallbacks_total`.
    #[serde(default, skip_serializing_if = "Fallback::is_refuse")]
    pub fallback: Fallback,
    /// onnxruntime's execution providers, tried in order (`["tensorrt", "cuda", "cpu"]`);
    /// empty: the CPU. A provider that cannot be registered (its library or the GPU missing) is
    /// a load error for this model, never a silent fall back to the CPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<Provider>,
    /// GPU ids a GPU provider runs on (the first is used by each instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<u32>,
    /// GPU arithmetic: `fp32`, `tf32` (CUDA) or `fp16` (TensorRT).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Where TensorRT keeps its built engines between loads; absent: no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
}

/// An onnxruntime execution provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// GPU arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Fp16,
}

impl Precision {
    fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

impl EngineConfig {
    /// Checks the settings against the kind of engine they are for; the error names the key
    /// with its `engine.` prefix.
    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((key.to_string(), reason));
        match self.kind {
            EngineKind::Tract if self.threads.get() > 1 => {
                return fail(
                    "engine.threads",
                    format!(
                        "{} threads: the tract engine computes each call on one thread; raise \
                         `instances` to run calls in parallel",
                        self.threads
                    ),
                )
            }
            _ => {}
        }
        if !self.providers.is_empty() && !matches!(self.kind, EngineKind::Ort | EngineKind::Auto) {
            return fail(
                "engine.providers",
                format!(
                    "providers are onnxruntime's; kind is '{}'",
                    self.kind.as_str()
                ),
            );
        }
        for (i, p) in self.providers.iter().enumerate() {
            if self.providers[..i].contains(p) {
                return fail(
                    "engine.providers",
                    format!("'{}' is listed twice", p.as_str()),
                );
            }
        }
        if self.devices.len() > 64 || self.devices.iter().any(|d| *d > 1024) {
            return fail("engine.devices", "at most 64 ids, each at most 1024".into());
        }
        if self.precision == Precision::Fp16 && !self.providers.contains(&Provider::Tensorrt) {
            return fail(
                "engine.precision",
                "fp16 needs the tensorrt provider".into(),
            );
        }
        if self.precision == Precision::Tf32
            && self.kind != EngineKind::Cuda
            && self.kind != EngineKind::Auto
            && !self.providers.contains(&Provider::Cuda)
        {
            return fail(
                "engine.precision",
                "tf32 needs kind = \"cuda\" or the cuda provider".into(),
            );
        }
        if self.threads.get() > 256 {
            return fail("engine.threads", format!("{} exceeds 256", self.threads));
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::default(),
            threads: one(),
            fallback: Fallback::default(),
            providers: Vec::new(),
            devices: Vec::new(),
            precision: Precision::default(),
            cache_dir: None,
        }
    }
}

/// What happens when a model's engine cannot take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    #[default]
    Refuse,
    Cpu,
}

impl Fallback {
    fn is_refuse(&self) -> bool {
        *self == Fallback::Refuse
    }
}

/// The engines this build knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// The pure-Rust CPU engine (tract), nothing to download.
    #[default]
    Tract,
    /// onnxruntime, its library loaded at run time (`onnxruntime_library`).
    Ort,
    /// The native CUDA engine.
    Cuda,
    /// CUDA when a GPU is present and the model fits it, else onnxruntime when its library
    /// loads, else tract.
    Auto,
}

impl EngineKind {
    /// Every concrete kind (the conformance suite runs each that this machine can).
    pub const ALL: [EngineKind; 3] = [EngineKind::Tract, EngineKind::Ort, EngineKind::Cuda];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::Ort => "ort",
            EngineKind::Cuda => "cuda",
            EngineKind::Auto => "auto",
        }
    }
}

/// Which version directories serve (Triton's `version_policy`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest { num_versions: NonZeroU32 },
    /// Every version.
    All {},
    /// Exactly these versions.
    Specific { versions: Vec<u64> },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest {
            num_versions: one(),
        }
    }
}

impl VersionPolicy {
    /// The versions this policy selects out of those present, highest first.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        match self {
            VersionPolicy::Latest { num_versions } => {
                sorted.truncate(num_versions.get() as usize);
                sorted
            }
            VersionPolicy::All {} => sorted,
            VersionPolicy::Specific { versions } => {
                sorted.retain(|v| versions.contains(v));
                sorted
            }
        }
    }
}

/// One input or output.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    pub name: String,
    #[serde(
        deserialize_with = "datatype_from_str",
        serialize_with = "datatype_to_str"
    )]
    pub datatype: DataType,
    /// Dimensions without the batch dimension when `max_batch_size > 0`; -1 is variable.
    pub dims: Vec<i64>,
}

/// Triton's `dynamic_batching`, with units in the key names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// Batch sizes the batcher prefers to cut at, each at most `max_batch_size`.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u32>,
    /// How long the oldest request may wait for others when no full or preferred batch can be
    /// formed. 0 sends whatever is queued as soon as an engine worker is free.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Same as `queue.max_queue_size`, accepted here too because Triton keeps it beside the
    /// batcher settings. Setting both is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<NonZeroU32>,
    /// Same as `queue.default_timeout_us`; setting both is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_us: Option<u64>,
}

/// The request queue of each loaded version.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicy {
    /// Requests waiting beyond this many are refused at once (HTTP 503).
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: NonZeroU32,
    /// A request still queued after this long fails with 504 and is not run; 0 means no limit.
    /// A request's own `timeout` parameter may only lower it.
    #[serde(default)]
    pub default_timeout_us: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            max_queue_size: default_max_queue_size(),
            default_timeout_us: 0,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: None,
            backend: Backend::Onnx,
            engine: EngineConfig::default(),
            max_batch_size: 0,
            version_policy: VersionPolicy::default(),
            instances: one(),
            default_model_filename: default_model_filename(),
            input: Vec::new(),
            output: Vec::new(),
            dynamic_batching: None,
            queue: None,
            warmup: None,
            rollout: RolloutConfig::default(),
            monitoring: MonitoringConfig::default(),
            retrain: RetrainConfig::default(),
        }
    }
}

impl ModelConfig {
    /// The batch dimension `max_batch_size` gives every tensor.
    pub fn batch(&self) -> BatchShape {
        BatchShape::of(self.max_batch_size)
    }

    /// The queue policy in force, wherever it was written.
    pub fn queue_policy(&self) -> QueuePolicy {
        let mut policy = self.queue.clone().unwrap_or_default();
        if let Some(db) = &self.dynamic_batching {
            if let Some(size) = db.max_queue_size {
                policy.max_queue_size = size;
            }
            if let Some(timeout) = db.default_timeout_us {
                policy.default_timeout_us = timeout;
            }
        }
        policy
    }

    /// Reads `<dir>/config.toml`, or the defaults when the file does not exist.
    pub fn load(dir: &Path, model_name: &str) -> Result<ModelConfig, ConfigError> {
        let path = dir.join("config.toml");
        let text = match super::read_config_text(&path) {
            Ok(text) => text,
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(ModelConfig::default())
            }
            Err(e) => return Err(e),
        };
        Self::checked(
            path,
            toml::from_str(&text).map_err(|e| e.to_string()),
            model_name,
        )
    }

    /// Parses a configuration given as JSON (the repository `load` API's `config` parameter).
    pub fn from_json(text: &str, model_name: &str) -> Result<ModelConfig, ConfigError> {
        let parsed = serde_json::from_str(text).map_err(|e| e.to_string());
        Self::checked(
            Path::new("<config parameter>").to_path_buf(),
            parsed,
            model_name,
        )
    }

    /// A parsed configuration, validated; errors name `path`.
    fn checked(
        path: std::path::PathBuf,
        parsed: Result<ModelConfig, String>,
        model_name: &str,
    ) -> Result<ModelConfig, ConfigError> {
        let config = parsed.map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
        config
            .validate(model_name)
            .map_err(|(key, reason)| ConfigError::Invalid { path, key, reason })?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express. The error names the key and the reason.
    pub fn validate(&self, model_name: &str) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((key.to_string(), reason));
        if let Some(name) = &self.name {
            if name != model_name {
                return fail(
                    "name",
                    format!("is '{name}' but the model directory is '{model_name}'"),
                );
            }
        }
        if self.max_batch_size > MAX_BATCH_SIZE_LIMIT {
            return fail(
                "max_batch_size",
                format!(
                    "{} exceeds the limit of {MAX_BATCH_SIZE_LIMIT}",
                    self.max_batch_size
                ),
            );
        }
        if let VersionPolicy::Specific { versions } = &self.version_policy {
            if versions.is_empty() {
                return fail(
                    "version_policy.specific.versions",
                    "must list at least one version".into(),
                );
            }
            if let Some(v) = versions.iter().find(|&&v| v == 0) {
                return fail(
                    "version_policy.specific.versions",
                    format!("{v} is not a positive integer"),
                );
            }
        }
        self.engine.validate()?;
        if self.instances.get() > MAX_INSTANCES {
            return fail(
                "instances",
                format!("{} exceeds the limit of {MAX_INSTANCES}", self.instances),
            );
        }
        if self.default_model_filename.is_empty()
            || self.default_model_filename.contains(['/', '\\'])
            || self.default_model_filename == ".."
        {
            return fail(
                "default_model_filename",
                format!("'{}' is not a plain file name", self.default_model_filename),
            );
        }
        self.validate_tensors()?;
        if let Some(w) = &self.warmup {
            w.validate()?;
        }
        self.rollout.validate()?;
        self.monitoring.validate()?;
        self.retrain.validate()?;
        if self.retrain.enabled && !self.monitoring.enabled {
            return Err((
                "retrain.enabled".into(),
                "retraining needs [monitoring] enabled: drift and feedback come from the log"
                    .into(),
            ));
        }
        if let Some(db) = &self.dynamic_batching {
            self.validate_batching(db)?;
        }
        Ok(())
    }

    /// `input` and `output`: named, each name once, and every dimension a size or -1.
    fn validate_tensors(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((key.to_string(), reason));
        for (key, list) in [("input", &self.input), ("output", &self.output)] {
            for (i, t) in list.iter().enumerate() {
                if t.name.is_empty() {
                    return fail(&format!("{key}[{i}].name"), "must not be empty".into());
                }
                if list[..i].iter().any(|o| o.name == t.name) {
                    return fail(
                        &format!("{key}[{i}].name"),
                        format!("'{}' is listed twice", t.name),
                    );
                }
                if let Some(d) = t.dims.iter().find(|&&d| d == 0 || d < -1) {
                    return fail(
                        &format!("{key}[{i}].dims"),
                        format!("{d} is not a dimension (a positive size, or -1 for variable)"),
                    );
                }
            }
        }
        Ok(())
    }

    /// `[dynamic_batching]` against the batch dimension and the queue it shares with `[queue]`.
    fn validate_batching(&self, db: &DynamicBatching) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: String| Err((key.to_string(), reason));
        if self.max_batch_size == 0 {
            return fail(
                "dynamic_batching",
                "needs max_batch_size > 0: a model without a batch dimension cannot batch".into(),
            );
        }
        if let Some(p) = db
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > self.max_batch_size)
        {
            return fail(
                "dynamic_batching.preferred_batch_sizes",
                format!(
                    "{p} is not between 1 and max_batch_size ({})",
                    self.max_batch_size
                ),
            );
        }
        if self.queue.is_some() && (db.max_queue_size.is_some() || db.default_timeout_us.is_some())
        {
            return fail(
                "dynamic_batching.max_queue_size",
                "the queue policy is set in both [queue] and [dynamic_batching]; keep one".into(),
            );
        }
        if db.max_queue_delay_us > 10_000_000 {
            return fail(
                "dynamic_batching.max_queue_delay_us",
                format!("{} exceeds the limit of 10 s", db.max_queue_delay_us),
            );
        }
        Ok(())
    }
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn default_model_filename() -> String {
    "model.onnx".into()
}

fn default_max_queue_size() -> NonZeroU32 {
    NonZeroU32::new(DEFAULT_MAX_QUEUE_SIZE).expect("the default queue size is positive")
}

fn datatype_from_str<'de, D: Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
    let name = String::deserialize(d)?;
    DataType::parse(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown datatype '{name}' (expected a V2 name such as FP32, INT64, BYTES, or TYPE_FP32)"
        ))
    })
}

fn datatype_to_str<S: serde::Serializer>(dt: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(dt.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, String> {
        let c: ModelConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate("m").map_err(|(k, r)| format!("{k}: {r}"))?;
        Ok(c)
    }

    #[test]
    fn minimal_config_defaults_everything() {
        let c = parse("max_batch_size = 64").unwrap();
        assert_eq!(c.max_batch_size, 64);
        assert_eq!(c.instances.get(), 1);
        assert_eq!(c.dynamic_batching, None);
        assert_eq!(c.version_policy, VersionPolicy::default());
        assert_eq!(
            c.queue_policy().max_queue_size.get(),
            DEFAULT_MAX_QUEUE_SIZE
        );
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
            name = "m"
            backend = "onnx"
            max_batch_size = 8
            instances = 2
            version_policy = { specific = { versions = [1, 3] } }
            [[input]]
            name = "x"
            datatype = "TYPE_FP32"
            dims = [4]
            [[output]]
            name = "y"
            datatype = "INT64"
            dims = [-1]
            [dynamic_batching]
            preferred_batch_sizes = [4, 8]
            max_queue_delay_us = 100
            [queue]
            max_queue_size = 16
            default_timeout_us = 5000
            "#,
        )
        .unwrap();
        assert_eq!(c.input[0].datatype, DataType::Fp32);
        assert_eq!(c.version_policy.select(&[1, 2, 3]), vec![3, 1]);
        assert_eq!(c.queue_policy().default_timeout_us, 5000);
        let c = parse(
            "max_batch_size = 8\n[dynamic_batching]\nmax_queue_size = 3\ndefault_timeout_us = 9",
        )
        .unwrap();
        assert_eq!(c.queue_policy().max_queue_size.get(), 3);
        assert_eq!(c.queue_policy().default_timeout_us, 9);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            ("max_batch = 3", "unknown field `max_batch`"),
            ("max_batch_size = -1", "max_batch_size"),
            ("[dynamic_batching]\nmax_queue_delay_us = 5", "needs max_batch_size > 0"),
            (
                "max_batch_size = 4\n[dynamic_batching]\npreferred_batch_sizes = [8]",
                "dynamic_batching.preferred_batch_sizes: 8",
            ),
            ("[[input]]\nname = \"x\"\ndatatype = \"FLOAT\"\ndims = [1]", "unknown datatype 'FLOAT'"),
            ("[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [0]", "input[0].dims"),
            ("version_policy = { latest = { num_versions = 0 } }", "version_policy"),
            ("version_policy = { specific = { versions = [] } }", "at least one"),
            ("name = \"other\"", "directory is 'm'"),
            ("backend = \"pytorch\"", "unknown variant `pytorch`"),
            ("instances = 0", "instances"),
            (
                "max_batch_size = 2\n[queue]\nmax_queue_size = 2\n[dynamic_batching]\nmax_queue_size = 2",
                "keep one",
            ),
            ("[rollout]\ncanary_weight = 1.5", "rollout.canary_weight: 1.5 is not between 0 and 1"),
            ("[rollout]\non_new_version = \"blue\"", "unknown variant `blue`"),
            ("[rollout]\nsticky_header = \"bad header\"", "rollout.sticky_header"),
            ("[rollout]\nmin_requests = 0", "rollout.min_requests"),
            ("[warmup]\nrequests = []", "warmup.requests"),
            ("[warmup]\nrequests = [\"../x.json\"]", "relative path"),
            (
                "[warmup]\nrequests = [\"a.json\"]\ncount = 1000000000",
                "warmup.count: 1000000000 exceeds the limit of 1000",
            ),
            ("instances = 100000", "instances: 100000 exceeds the limit of 256"),
            ("[engine]\nkind = \"gpu\"", "unknown variant `gpu`"),
            ("[engine]\nfallback = \"maybe\"", "unknown variant `maybe`"),
            ("[engine]\nkind = \"ort\"\nthreads = 1000", "engine.threads: 1000 exceeds 256"),
            ("[engine]\nproviders = [\"cuda\"]", "engine.providers: providers are onnxruntime's"),
            ("[engine]\nkind = \"tract\"\nprecision = \"tf32\"", "tf32 needs kind = \"cuda\""),
            ("[engine]\nkind = \"ort\"\nproviders = [\"cuda\", \"cuda\"]", "listed twice"),
            ("[engine]\nkind = \"ort\"\nprecision = \"fp16\"", "fp16 needs the tensorrt provider"),
            ("[engine]\nkind = \"ort\"\nproviders = [\"rocm\"]", "unknown variant `rocm`"),
            ("[engine]\nthreads = 4", "engine.threads: 4 threads"),
            ("[engine]\ndevice = 0", "unknown field `device`"),
            ("[monitoring]\nsample_rate = 2.0", "monitoring.sample_rate: 2 is not between"),
            ("[monitoring]\nwindow_rows = 0", "monitoring.window_rows"),
            ("[monitoring]\nbogus = 1", "unknown field `bogus`"),
            ("[monitoring.thresholds]\nalpha = 0.0", "monitoring.thresholds.alpha"),
            ("[monitoring.thresholds]\npsi = -1.0", "monitoring.thresholds.psi"),
            ("[monitoring]\nfeatures = [\"a\", \"a\"]", "monitoring.features[1]"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn version_policies_select() {
        let avail = [1, 5, 3, 2];
        assert_eq!(VersionPolicy::default().select(&avail), vec![5]);
        let latest2 = VersionPolicy::Latest {
            num_versions: NonZeroU32::new(2).unwrap(),
        };
        assert_eq!(latest2.select(&avail), vec![5, 3]);
        assert_eq!(VersionPolicy::All {}.select(&avail), vec![5, 3, 2, 1]);
        let specific = VersionPolicy::Specific {
            versions: vec![2, 9],
        };
        assert_eq!(specific.select(&avail), vec![2]);
    }

    #[test]
    fn json_config_round_trips() {
        let c = parse("max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 7").unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(ModelConfig::from_json(&json, "m").unwrap(), c);
    }
}
