//! Publishing a passed run, the same way from `cairn train` and from a server job: the version's
//! files (the model, its baseline, the run record that names the version, and whatever the
//! caller adds), a `config.toml` for a model that has none, and the run record updated either
//! way. The number is the repository's to give (one above the highest in a directory, a claim
//! in an object store), so the files are made once it is known.

use std::path::Path;

use cairn_train::runs::Store;
use cairn_train::{Outcome, TrainConfig};

use crate::config::ModelConfig;
use crate::repository::{FilesFor, RepositoryError, VersionFiles};

/// What a passed run publishes besides its files' content: the model file's name and, for a
/// model that has no `config.toml` yet, the one it gets.
pub(crate) struct Plan {
    filename: String,
    config: Option<ModelConfig>,
}

/// The plan for a run of `config` whose model lives in `model_dir` (the repository's, or
/// `cairn train`'s local view of a store's).
pub(crate) fn plan(config: &TrainConfig, model_dir: &Path, run: &str) -> Result<Plan, String> {
    if model_dir.join("config.toml").is_file() {
        let filename = ModelConfig::load(model_dir, &config.model)
            .map(|c| c.default_model_filename)
            .map_err(|e| e.to_string())?;
        return Ok(Plan {
            filename,
            config: None,
        });
    }
    let new = new_model_config(config, run)?;
    Ok(Plan {
        filename: new.default_model_filename.clone(),
        config: Some(new),
    })
}

/// The files of `outcome` for the number the repository gives: the record they carry names
/// that version. `extra` files are added as they are (a server job's mark).
pub(crate) fn files_for(plan: Plan, outcome: &Outcome, extra: Vec<(String, Vec<u8>)>) -> FilesFor {
    let mut record = outcome.record.clone();
    let model = outcome.model_onnx.clone();
    let baseline = outcome.baseline_json.clone().into_bytes();
    Box::new(move |version| {
        record.published_version = Some(version);
        let run_json = serde_json::to_vec_pretty(&record).map_err(|e| {
            RepositoryError::BadRequest(format!("the run record does not serialize: {e}"))
        })?;
        let mut files = vec![
            (plan.filename, model),
            ("baseline.json".to_string(), baseline),
            ("run.json".to_string(), run_json),
        ];
        files.extend(extra);
        Ok(VersionFiles {
            files,
            config: plan.config,
        })
    })
}

/// Saves the record of a run published as `version`, and says so.
pub(crate) fn recorded(
    config: &TrainConfig,
    outcome: &mut Outcome,
    version: u64,
) -> Result<u64, String> {
    outcome.record.published_version = Some(version);
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
