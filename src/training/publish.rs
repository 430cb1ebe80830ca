//! Publishing a passed run, the same way from `cairn train` and from a server job: the next
//! version's files (the model, its baseline, the run record that names the version), a
//! `config.toml` for a model that has none, and the run record updated either way.

use std::path::Path;

use cairn_train::runs::Store;
use cairn_train::{Outcome, TrainConfig};

use crate::config::ModelConfig;

/// What the repository is handed.
pub(crate) struct NextVersion {
    pub version: u64,
    pub files: Vec<(String, Vec<u8>)>,
    /// The new `config.toml`, when the model has none.
    pub config: Option<ModelConfig>,
}

/// The files of `outcome` as the version above the highest in `model_dir`; the record it
/// carries names that version.
pub(crate) fn next_version(
    config: &TrainConfig,
    model_dir: &Path,
    outcome: &mut Outcome,
) -> Result<NextVersion, String> {
    let version = crate::repository::versions_in(model_dir)
        .last()
        .map_or(1, |v| v + 1);
    let new_config = if model_dir.join("config.toml").is_file() {
        None
    } else {
        Some(new_model_config(config, &outcome.record.id)?)
    };
    let filename = match &new_config {
        Some(c) => c.default_model_filename.clone(),
        None => ModelConfig::load(model_dir, &config.model)
            .map(|c| c.default_model_filename)
            .map_err(|e| e.to_string())?,
    };
    outcome.record.published_version = Some(version);
    let run_json = serde_json::to_vec_pretty(&outcome.record).map_err(|e| e.to_string())?;
    Ok(NextVersion {
        version,
        files: vec![
            (filename, outcome.model_onnx.clone()),
            (
                "baseline.json".to_string(),
                outcome.baseline_json.clone().into_bytes(),
            ),
            ("run.json".to_string(), run_json),
        ],
        config: new_config,
    })
}

/// Saves the record of a run published as `version`, and says so.
pub(crate) fn recorded(
    config: &TrainConfig,
    outcome: &Outcome,
    version: u64,
) -> Result<u64, String> {
    Store::new(&config.output.runs_dir)
        .save(&outcome.record)
        .map_err(|e| e.to_string())?;
    tracing::info!(model = %config.model, version, run = %outcome.record.id, "published a trained version");
    Ok(version)
}

/// Records a publish that failed (the run is failed, with no version) and returns the message.
pub(crate) fn failed(config: &TrainConfig, outcome: &mut Outcome, e: &str) -> String {
    outcome.record.status = "failed".into();
    outcome.record.error = Some(format!("publish: {e}"));
    outcome.record.published_version = None;
    if let Err(save) = Store::new(&config.output.runs_dir).save(&outcome.record) {
        tracing::error!(run = %outcome.record.id, error = %save, "cannot record the failed publish");
    }
    format!("run {}: cannot publish: {e}", outcome.record.id)
}

/// The `config.toml` of a model that has none: batched, monitored on the trained features.
fn new_model_config(config: &TrainConfig, run: &str) -> Result<ModelConfig, String> {
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "# Written by cairn train (run {run}).\nbackend = \"onnx\"\nmax_batch_size = 64\n\n\
         [dynamic_batching]\nmax_queue_delay_us = 100\n\n\
         [monitoring]\nenabled = true\nfeatures = [{}]\ncategorical = [{}]\n",
        quote(&config.data.features),
        quote(&config.data.categorical)
    );
    toml::from_str(&text).map_err(|e| format!("the new config.toml does not parse: {e}"))
}
