//! The runs store: one directory per run under the runs directory, holding `run.json` (config,
//! data summary, every trial's epochs, final metrics, gate decision, artifacts) and the exported
//! files. JSON files rather than a database: a run is read by `cairn runs`, by the server's job
//! API and by anyone with `jq`, and a crash mid-write leaves the previous file (written to a
//! temporary name, synced, then renamed).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::eval::Scores;
use crate::nn::{Epoch, Hyper};

/// One run, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub model: String,
    /// `running`, `succeeded`, `refused` (the gate said no) or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The config file, as given.
    pub config_file: String,
    pub config: serde_json::Value,
    pub seed: u64,
    pub started: String,
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub data: Option<DataSummary>,
    #[serde(default)]
    pub trials: Vec<TrialRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Scores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Scores>,
    /// Largest difference between the exported graph's and the trained network's probabilities
    /// (or values) on the test rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_max_abs_diff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateRecord>,
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_version: Option<u64>,
}

/// Rows and balance of each split, and the training split's feature statistics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataSummary {
    pub source: String,
    pub rows_read: usize,
    pub unlabelled: usize,
    #[serde(default)]
    pub not_served: usize,
    /// Labels no prediction read holds (a log source): the join's unknown ids.
    #[serde(default, skip_serializing_if = "crate::data::is_zero")]
    pub labels_unmatched: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub test_rows: usize,
    /// Rows per class in each split (classification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_balance: Vec<ClassCount>,
    pub features: Vec<FeatureSummary>,
    /// The fitted prep, as exported.
    pub prep: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Its weight in the loss.
    pub weight: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureSummary {
    pub name: String,
    pub kind: String,
    pub missing: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<usize>,
}

/// One trial of the search (the only one without a search).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialRecord {
    pub index: usize,
    pub seed: u64,
    pub hyper: Hyper,
    pub epochs: Vec<Epoch>,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub best_validation_metric: f64,
    pub stopped_early: bool,
    pub duration_s: f64,
}

/// The gate's comparison and decision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateRecord {
    pub metric: String,
    pub margin: f64,
    pub candidate: Option<f64>,
    /// `None` when nothing serves yet.
    pub serving: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_version: Option<u64>,
    pub rows: usize,
    pub passed: bool,
    pub reason: String,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("no run '{0}'")]
    Unknown(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> RunsError {
    RunsError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The runs directory.
#[derive(Clone, Debug)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Writes (or rewrites) a run's record, atomically.
    pub fn save(&self, run: &RunRecord) -> Result<PathBuf, RunsError> {
        let dir = self.run_dir(&run.id);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join("run.json");
        let tmp = dir.join(".run.json.tmp");
        let text = serde_json::to_vec_pretty(run).map_err(|e| io(&path, e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&text).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(path)
    }

    /// Writes an artifact beside the record; returns its path.
    pub fn write_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<PathBuf, RunsError> {
        let dir = self.run_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        Ok(path)
    }

    pub fn load(&self, id: &str) -> Result<RunRecord, RunsError> {
        let path = self.run_dir(id).join("run.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RunsError::Unknown(id.to_string()))
            }
            Err(e) => return Err(io(&path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| io(&path, e))
    }

    /// Every readable run, oldest first (ids sort by time).
    pub fn list(&self) -> Result<Vec<RunRecord>, RunsError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("run.json").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        ids.sort();
        let mut runs = Vec::new();
        for id in ids {
            match self.load(&id) {
                Ok(r) => runs.push(r),
                Err(e) => tracing::warn!(run = %id, error = %e, "unreadable run record; skipped"),
            }
        }
        Ok(runs)
    }
}

/// A run id that sorts by time, to the millisecond: `20261202-051502.187-iris-3fa2`.
pub fn new_id(model: &str, seed: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + now).to_string();
    // 2026-12-02T05:15:02.187Z -> 20261202-051502.187
    let digits: String = stamp.chars().filter(|c| c.is_ascii_digit()).collect();
    let tail = crate::rng::Rng::derive(now.as_nanos() as u64, seed).next_u64() & 0xffff;
    format!(
        "{}-{}.{}-{model}-{tail:04x}",
        &digits[..8],
        &digits[8..14],
        &digits[14..17]
    )
}

/// Now, RFC 3339.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
