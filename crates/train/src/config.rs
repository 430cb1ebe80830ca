//! The training config (`configs/train/<model>.toml`): where the data comes from, how it is
//! prepared and split, what is trained and searched, how the result is gated and where it goes.
//! Every wrong setting is an error naming the file and the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a config was rejected: always the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key '{key}': {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// A whole training config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model in the repository that the result becomes a version of.
    pub model: String,
    /// Seeds the split, the initial weights, the batch order and the search.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Threads training may use in all (trials in parallel, each on one thread).
    #[serde(default = "default_threads")]
    pub threads: usize,
    pub data: DataConfig,
    #[serde(default)]
    pub prep: PrepConfig,
    #[serde(default)]
    pub split: SplitConfig,
    pub trainer: TrainerConfig,
    #[serde(default)]
    pub search: Option<SearchConfig>,
    #[serde(default)]
    pub gate: GateConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

fn default_seed() -> u64 {
    42
}
fn default_threads() -> usize {
    2
}

/// Where rows come from. Exactly one of `path` and `log`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A CSV (`.csv`) or Parquet (`.parquet`) file, relative to the working directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The model's prediction log joined with its feedback.
    #[serde(default)]
    pub log: Option<LogSource>,
    /// The features in the exported model's input order: `input` is `[N, len(features)]` FP32.
    pub features: Vec<String>,
    /// Which of `features` are categories (numeric codes in the served tensor).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// The label (classification) or value (regression) column; for a log source, the feedback.
    #[serde(default)]
    pub target: Option<String>,
    /// A column of times (seconds or an RFC 3339 string) for a time split; for a log source, the
    /// prediction time.
    #[serde(default)]
    pub time_column: Option<String>,
}

/// The prediction log of a model, joined with feedback on (request id, row).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSource {
    /// The log directory (the server's `prediction_log_dir`), holding `<model>/predictions` and
    /// `<model>/feedback`, or a log store's URL (the server's `log_store`: every replica's
    /// segments); a job the server runs uses the server's when left out.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Where the segments of a log store's `dir` were downloaded to (laid out as `dir`), by
    /// whoever runs the training (`cairn train`, the server): read instead of `dir`, which
    /// still names the source. This crate opens no store.
    #[serde(skip)]
    pub staged: Option<PathBuf>,
    /// Whose log; the config's `model` when left out.
    #[serde(default)]
    pub model: Option<String>,
    /// Rows predicted at or after this time (RFC 3339, or seconds since the epoch).
    #[serde(default)]
    pub from: Option<String>,
    /// Rows predicted before this time.
    #[serde(default)]
    pub to: Option<String>,
    /// The most recent labelled rows only (after `from`/`to`).
    #[serde(default)]
    pub last_rows: Option<usize>,
}

/// How missing numeric values are filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Impute {
    #[default]
    Mean,
    Median,
    MostFrequent,
    Constant,
}

/// Data prep, fitted on the training split only and exported inside the model.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrepConfig {
    /// Missing numeric values.
    #[serde(default)]
    pub impute: Impute,
    /// Missing categories: `most_frequent` or `constant`.
    #[serde(default = "most_frequent")]
    pub impute_categorical: Impute,
    /// The value `constant` fills with.
    #[serde(default)]
    pub fill_value: f64,
    /// Numeric features scaled to zero mean and unit variance.
    #[serde(default = "yes")]
    pub standardize: bool,
    /// One-hot columns per categorical feature; rarer categories share the unknown bucket.
    #[serde(default = "default_max_categories")]
    pub max_categories: usize,
    /// `balanced` weighs each class by n / (classes · n_class), as scikit-learn does.
    #[serde(default)]
    pub class_weight: ClassWeight,
}

fn most_frequent() -> Impute {
    Impute::MostFrequent
}
fn yes() -> bool {
    true
}
fn default_max_categories() -> usize {
    20
}

impl Default for PrepConfig {
    fn default() -> Self {
        PrepConfig {
            impute: Impute::Mean,
            impute_categorical: Impute::MostFrequent,
            fill_value: 0.0,
            standardize: true,
            max_categories: default_max_categories(),
            class_weight: ClassWeight::None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    #[default]
    None,
    Balanced,
}

/// How rows are split into train, validation and test.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    #[serde(default)]
    pub method: SplitMethod,
    /// Share of rows for validation (early stopping, search).
    #[serde(default = "default_share")]
    pub validation: f64,
    /// Share of rows for test (final metrics and the gate).
    #[serde(default = "default_share")]
    pub test: f64,
    /// For `column`: the column whose values are `train`, `validation` and `test`.
    #[serde(default)]
    pub column: Option<String>,
}

fn default_share() -> f64 {
    0.15
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            method: SplitMethod::Stratified,
            validation: default_share(),
            test: default_share(),
            column: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// Random, per class for classification (plain random for regression).
    #[default]
    Stratified,
    /// Ordered by `data.time_column`: train on the past, test on the most recent.
    Time,
    /// Given by a column of the data.
    Column,
}

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// Logistic regression: binary (one logit) or multinomial (softmax).
    Logistic,
    /// A multi-layer perceptron classifier (ReLU).
    Mlp,
    /// Linear regression.
    Linear,
    /// A multi-layer perceptron regressor (ReLU).
    MlpRegressor,
}

impl TrainerKind {
    pub fn is_classifier(self) -> bool {
        matches!(self, TrainerKind::Logistic | TrainerKind::Mlp)
    }

    pub fn has_hidden(self) -> bool {
        matches!(self, TrainerKind::Mlp | TrainerKind::MlpRegressor)
    }
}

/// The trainer and its settings (the search's starting point).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    pub kind: TrainerKind,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the biases): loss + l2/2 · Σ‖W‖².
    #[serde(default)]
    pub l2: f64,
    /// Hidden layer sizes (MLP only).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Epochs without a better validation loss before stopping; 0 never stops early.
    #[serde(default = "default_patience")]
    pub patience: usize,
}

fn default_epochs() -> usize {
    100
}
fn default_batch() -> usize {
    64
}
fn default_lr() -> f64 {
    0.01
}
fn default_patience() -> usize {
    10
}

/// Random search over a declared space; every trial is recorded. A key left out keeps the
/// trainer's value.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub trials: usize,
    /// `[low, high]`, sampled log-uniformly.
    #[serde(default)]
    pub learning_rate: Option<[f64; 2]>,
    /// `[low, high]`, sampled log-uniformly.
    #[serde(default)]
    pub l2: Option<[f64; 2]>,
    /// Choices of hidden layer sizes.
    #[serde(default)]
    pub hidden: Option<Vec<Vec<usize>>>,
    /// `[low, high]`, inclusive, sampled uniformly.
    #[serde(default)]
    pub epochs: Option<[usize; 2]>,
}

/// The metric a candidate is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    Accuracy,
    F1Macro,
    LogLoss,
    Rmse,
    Mae,
}

impl GateMetric {
    pub fn higher_is_better(self) -> bool {
        matches!(self, GateMetric::Accuracy | GateMetric::F1Macro)
    }

    pub fn for_classification(self) -> bool {
        !matches!(self, GateMetric::Rmse | GateMetric::Mae)
    }
}

/// Before a new version may serve it must beat the serving version on the same held-out rows,
/// or match it within `margin`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Default: accuracy for classifiers, rmse for regressors.
    #[serde(default)]
    pub metric: Option<GateMetric>,
    /// How much worse than the serving version a candidate may be.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

fn default_margin() -> f64 {
    0.01
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            metric: None,
            margin: default_margin(),
        }
    }
}

/// Where the result goes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The model repository (the server's `--model-repository`): a directory, or an
    /// object-store URL (`s3://bucket/prefix`, `gs://`, `az://`, `file://`), kept as written.
    #[serde(default = "default_repository")]
    pub repository: PathBuf,
    /// The runs store.
    #[serde(default = "default_runs")]
    pub runs_dir: PathBuf,
    /// Publish a version that passes the gate; off, the run only records and exports.
    #[serde(default = "yes")]
    pub publish: bool,
}

impl OutputConfig {
    /// The repository's URL when it is an object store rather than a directory.
    pub fn repository_url(&self) -> Option<&str> {
        self.repository.to_str().filter(|r| r.contains("://"))
    }
}

fn default_repository() -> PathBuf {
    PathBuf::from("models")
}
fn default_runs() -> PathBuf {
    PathBuf::from("state/runs")
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            repository: default_repository(),
            runs_dir: default_runs(),
            publish: true,
        }
    }
}

/// Most trials, threads, hidden width and epochs a config may ask for: every allocation they
/// size is checked against these first.
pub const MAX_TRIALS: usize = 256;
pub const MAX_THREADS: usize = 256;
pub const MAX_HIDDEN: usize = 4096;
/// The largest training config read; real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
pub const MAX_LAYERS: usize = 8;
pub const MAX_EPOCHS: usize = 100_000;
pub const MAX_FEATURES: usize = 4096;
pub const MAX_CATEGORIES: usize = 1024;

impl TrainConfig {
    /// Reads and checks a config file: a regular file of at most [`MAX_CONFIG_BYTES`] (a model's
    /// `[retrain] config` names it, and the model's config may come from a client).
    pub fn load(path: &Path) -> Result<TrainConfig, ConfigError> {
        let file = path.display().to_string();
        let text =
            cairn_core::bounded::read_regular_to_string(path, MAX_CONFIG_BYTES).map_err(|e| {
                ConfigError {
                    file: file.clone(),
                    key: "(file)".into(),
                    reason: format!("cannot read it: {e}"),
                }
            })?;
        TrainConfig::parse(&text, &file)
    }

    /// Parses and checks config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<TrainConfig, ConfigError> {
        let fail = |key: String, reason: String| ConfigError {
            file: file.to_string(),
            key,
            reason,
        };
        let value: toml::Table = toml::from_str(text).map_err(|e| {
            fail(
                "(syntax)".into(),
                e.message().to_string() + &line_of(text, e.span()),
            )
        })?;
        let config: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".into()
                } else {
                    key
                };
                fail(key, e.into_inner().to_string())
            })?;
        config
            .validate()
            .map_err(|(key, reason)| fail(key, reason))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.model.is_empty()
            || !self
                .model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.model.starts_with('.')
        {
            return bad(
                "model",
                format!(
                    "'{}' is not a model name (letters, digits, '-', '_', '.')",
                    self.model
                ),
            );
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad("threads", format!("must be 1 to {MAX_THREADS}"));
        }
        check_data(&self.data)?;
        check_prep(&self.prep)?;
        check_split(&self.split, &self.data)?;
        let t = &self.trainer;
        check_epochs("trainer.epochs", t.epochs)?;
        if t.batch_size == 0 || t.batch_size > 1 << 20 {
            return bad("trainer.batch_size", "must be 1 to 1048576".into());
        }
        check_positive("trainer.learning_rate", t.learning_rate)?;
        if !(t.l2 >= 0.0 && t.l2.is_finite()) {
            return bad("trainer.l2", "must be a finite number at least 0".into());
        }
        check_hidden("trainer.hidden", &t.hidden, t.kind)?;
        if let Some(search) = &self.search {
            check_search(search, t.kind)?;
        }
        if let Some(m) = self.gate.metric {
            if m.for_classification() != t.kind.is_classifier() {
                return bad(
                    "gate.metric",
                    format!("{m:?} does not judge a {:?} trainer", t.kind).to_lowercase(),
                );
            }
        }
        if !(self.gate.margin >= 0.0 && self.gate.margin.is_finite()) {
            return bad("gate.margin", "must be a finite number at least 0".into());
        }
        Ok(())
    }

    /// The metric the gate uses.
    pub fn gate_metric(&self) -> GateMetric {
        self.gate
            .metric
            .unwrap_or(if self.trainer.kind.is_classifier() {
                GateMetric::Accuracy
            } else {
                GateMetric::Rmse
            })
    }
}

/// A rejected setting: its key and why ([`TrainConfig::parse`] adds the file).
fn bad(key: &str, reason: String) -> Result<(), (String, String)> {
    Err((key.to_string(), reason))
}

/// The `[data]` table: exactly one source, and features that are distinct, not the target,
/// and cover the categorical ones.
fn check_data(d: &DataConfig) -> Result<(), (String, String)> {
    match (&d.path, &d.log) {
        (None, None) => return bad("data", "needs 'path' or 'log'".into()),
        (Some(_), Some(_)) => return bad("data", "has both 'path' and 'log'; pick one".into()),
        _ => {}
    }
    if d.path.is_some() && d.target.is_none() {
        return bad(
            "data.target",
            "a file source needs the target column".into(),
        );
    }
    if let Some(log) = &d.log {
        if log.last_rows == Some(0) {
            return bad("data.log.last_rows", "must be at least 1".into());
        }
    }
    if d.features.is_empty() {
        return bad("data.features", "names no feature".into());
    }
    if d.features.len() > MAX_FEATURES {
        return bad(
            "data.features",
            format!("more than {MAX_FEATURES} features"),
        );
    }
    for (i, f) in d.features.iter().enumerate() {
        if d.features[..i].contains(f) {
            return bad("data.features", format!("'{f}' is named twice"));
        }
        if Some(f) == d.target.as_ref() {
            return bad("data.features", format!("'{f}' is the target"));
        }
    }
    for c in &d.categorical {
        if !d.features.contains(c) {
            return bad("data.categorical", format!("'{c}' is not in data.features"));
        }
    }
    Ok(())
}

fn check_prep(p: &PrepConfig) -> Result<(), (String, String)> {
    if !matches!(
        p.impute_categorical,
        Impute::MostFrequent | Impute::Constant
    ) {
        return bad(
            "prep.impute_categorical",
            "must be 'most_frequent' or 'constant'".into(),
        );
    }
    if !p.fill_value.is_finite() {
        return bad("prep.fill_value", "must be a finite number".into());
    }
    if p.max_categories == 0 || p.max_categories > MAX_CATEGORIES {
        return bad(
            "prep.max_categories",
            format!("must be 1 to {MAX_CATEGORIES}"),
        );
    }
    Ok(())
}

/// The `[split]` table; `d` says whether a time split has its times.
fn check_split(s: &SplitConfig, d: &DataConfig) -> Result<(), (String, String)> {
    for (key, v) in [("split.validation", s.validation), ("split.test", s.test)] {
        if !(v > 0.0 && v < 1.0) {
            return bad(key, format!("{v} is not a share between 0 and 1"));
        }
    }
    if s.validation + s.test >= 0.9 {
        return bad(
            "split",
            "validation + test leave under 10 % to train on".into(),
        );
    }
    match s.method {
        SplitMethod::Time if d.time_column.is_none() && d.log.is_none() => {
            return bad(
                "split.method",
                "'time' needs data.time_column (a log source uses the prediction time)".into(),
            )
        }
        SplitMethod::Column if s.column.is_none() => {
            return bad("split.column", "method 'column' needs the column".into())
        }
        _ => {}
    }
    Ok(())
}

/// The `[search]` table; `kind` says whether hidden layers may be searched.
fn check_search(search: &SearchConfig, kind: TrainerKind) -> Result<(), (String, String)> {
    if search.trials == 0 || search.trials > MAX_TRIALS {
        return bad("search.trials", format!("must be 1 to {MAX_TRIALS}"));
    }
    for (key, range) in [
        ("search.learning_rate", search.learning_rate),
        ("search.l2", search.l2),
    ] {
        if let Some([lo, hi]) = range {
            if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
                return bad(key, "must be [low, high] with 0 < low <= high".into());
            }
        }
    }
    if let Some([lo, hi]) = search.epochs {
        check_epochs("search.epochs", lo)?;
        check_epochs("search.epochs", hi)?;
        if hi < lo {
            return bad(
                "search.epochs",
                "must be [low, high] with low <= high".into(),
            );
        }
    }
    if let Some(choices) = &search.hidden {
        if choices.is_empty() {
            return bad("search.hidden", "lists no choice".into());
        }
        if !kind.has_hidden() {
            return bad("search.hidden", "only an MLP has hidden layers".into());
        }
        for c in choices {
            check_hidden("search.hidden", c, kind)?;
        }
    }
    Ok(())
}

fn check_epochs(key: &str, epochs: usize) -> Result<(), (String, String)> {
    if epochs == 0 || epochs > MAX_EPOCHS {
        return Err((key.into(), format!("must be 1 to {MAX_EPOCHS}")));
    }
    Ok(())
}

fn check_positive(key: &str, v: f64) -> Result<(), (String, String)> {
    if !(v > 0.0 && v.is_finite()) {
        return Err((key.into(), "must be a positive number".into()));
    }
    Ok(())
}

fn check_hidden(key: &str, hidden: &[usize], kind: TrainerKind) -> Result<(), (String, String)> {
    if !kind.has_hidden() {
        if !hidden.is_empty() {
            return Err((
                key.into(),
                format!("a {kind:?} trainer has no hidden layers").to_lowercase(),
            ));
        }
        return Ok(());
    }
    if hidden.is_empty() {
        return Err((key.into(), "an MLP needs at least one hidden layer".into()));
    }
    if hidden.len() > MAX_LAYERS || hidden.iter().any(|&h| h == 0 || h > MAX_HIDDEN) {
        return Err((
            key.into(),
            format!("at most {MAX_LAYERS} layers of 1 to {MAX_HIDDEN} units"),
        ));
    }
    Ok(())
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
model = "iris"
[data]
path = "models/iris/train.csv"
features = ["a", "b"]
target = "y"
[trainer]
kind = "mlp"
hidden = [8]
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = TrainConfig::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.seed, 42);
        assert_eq!(c.split.method, SplitMethod::Stratified);
        assert_eq!(c.gate_metric(), GateMetric::Accuracy);
    }

    fn err(text: &str) -> ConfigError {
        TrainConfig::parse(text, "t.toml").unwrap_err()
    }

    #[test]
    fn a_wrong_setting_names_the_file_and_key() {
        let e = err(&GOOD.replace("hidden = [8]", "hidden = [8]\nepochs = \"many\""));
        assert_eq!(e.key, "trainer.epochs", "{e}");
        assert!(
            e.to_string().starts_with("t.toml: key 'trainer.epochs'"),
            "{e}"
        );
        let e = err(&GOOD.replace("[trainer]", "[split]\ntest = 1.5\n[trainer]"));
        assert_eq!(e.key, "split.test", "{e}");
        let e = err(&GOOD.replace("kind = \"mlp\"", "kind = \"forest\""));
        assert_eq!(e.key, "trainer.kind", "{e}");
        let e = err(&GOOD.replace("[trainer]", "[prep]\nimpute = \"mode\"\n[trainer]"));
        assert_eq!(e.key, "prep.impute", "{e}");
        let e = err(&GOOD.replace("target = \"y\"", "target = \"y\"\ncolour = 1"));
        assert_eq!(e.key, "data.colour", "{e}");
        let e = err(&GOOD.replace("hidden = [8]", "hidden = []"));
        assert_eq!(e.key, "trainer.hidden", "{e}");
        let e = err(&GOOD.replace("features = [\"a\", \"b\"]", "features = [\"a\", \"y\"]"));
        assert_eq!(e.key, "data.features", "{e}");
        let e = err(&format!("{GOOD}[split]\nmethod = \"time\"\n"));
        assert_eq!(e.key, "split.method", "{e}");
        let e = err(&format!("{GOOD}[search]\ntrials = 100000\n"));
        assert_eq!(e.key, "search.trials", "{e}");
        let e = err(&format!("{GOOD}[gate]\nmetric = \"rmse\"\n"));
        assert_eq!(e.key, "gate.metric", "{e}");
        let e = err("model = ");
        assert_eq!(e.key, "(syntax)", "{e}");
        let e = err(&GOOD.replace("model = \"iris\"", "model = \"../x\""));
        assert_eq!(e.key, "model", "{e}");
    }
}
