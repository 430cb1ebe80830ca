//! Scoring a model file on raw rows with the serving engine (tract), so the metrics a run
//! records and the gate compares are those of the exported graph, prep included, exactly as the
//! server will run it.

use std::path::Path;

use cairn_core::engine::{BatchInput, Engine, LoadOptions};
use cairn_core::tensor::{DataType, Tensor};
use cairn_engine_tract::TractEngine;
use cairn_monitor::log::format_number;
use serde::{Deserialize, Serialize};

/// Rows run per call.
const CHUNK: usize = 1024;

/// What a model answered for each row.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    /// The label output as text (`1`, not `1.0`), classification.
    pub labels: Vec<String>,
    /// `[rows, classes]`, when the model has a probabilities output.
    pub probabilities: Option<(usize, Vec<f32>)>,
    /// The value output, regression.
    pub values: Vec<f64>,
}

/// A model file loaded for scoring, with the outputs that carry labels, probabilities or values.
pub struct Scorer {
    engine: TractEngine,
    width: usize,
    classify: bool,
    label_at: Option<usize>,
    prob_at: Option<usize>,
    value_at: Option<usize>,
}

impl Scorer {
    /// Loads the model at `path` to score rows of `width` FP32 features, once for every set.
    pub fn load(path: &Path, width: usize, classify: bool) -> Result<Scorer, String> {
        let options = LoadOptions {
            batch_dim: true,
            ..LoadOptions::default()
        };
        let engine = TractEngine::load(path, &options).map_err(|e| e.to_string())?;
        let sig = engine.signature();
        if sig.inputs.len() != 1 || sig.inputs[0].dtype != DataType::Fp32 {
            return Err(format!(
                "{}: the model does not take one FP32 input, so it cannot be scored on these features",
                path.display()
            ));
        }
        if let Some(&w) = sig.inputs[0].dims.get(1) {
            if w >= 0 && w as usize != width {
                return Err(format!(
                    "{}: the model takes {w} features, the data has {width}",
                    path.display()
                ));
            }
        }
        let find = |pick: &dyn Fn(&cairn_core::engine::TensorSpec) -> bool| {
            sig.outputs.iter().position(pick)
        };
        let label_at = find(&|t| t.name == "label").or_else(|| {
            find(&|t| matches!(t.dtype, DataType::Int64 | DataType::Int32 | DataType::Bytes))
        });
        let prob_at = find(&|t| t.name == "probabilities")
            .or_else(|| find(&|t| t.dtype == DataType::Fp32 && t.dims.len() == 2));
        let value_at =
            find(&|t| t.name == "variable").or_else(|| find(&|t| t.dtype == DataType::Fp32));
        if classify && label_at.is_none() && prob_at.is_none() {
            return Err(format!(
                "{}: the model has no label or probabilities output",
                path.display()
            ));
        }
        if !classify && value_at.is_none() {
            return Err(format!("{}: the model has no FP32 output", path.display()));
        }
        Ok(Scorer {
            engine,
            width,
            classify,
            label_at,
            prob_at,
            value_at,
        })
    }

    /// The model's answers for `x` (row-major `[rows, width]`).
    pub fn predict(&self, x: &[f32]) -> Result<Predictions, String> {
        let width = self.width;
        let mut session = self.engine.new_session().map_err(|e| e.to_string())?;
        let mut out = Predictions::default();
        let rows = x.len() / width.max(1);
        let mut probs = Vec::new();
        let mut classes = 0;
        for start in (0..rows).step_by(CHUNK) {
            let n = CHUNK.min(rows - start);
            let t = Tensor::from_values(vec![n, width], &x[start * width..(start + n) * width])
                .map_err(|e| e.to_string())?;
            session
                .set_inputs(&[BatchInput {
                    shape: vec![n, width],
                    parts: vec![&t],
                }])
                .map_err(|e| e.to_string())?;
            let outputs = session.run().map_err(|e| e.to_string())?;
            if self.classify {
                if let Some(p) = self.prob_at {
                    let t = &outputs[p];
                    classes = t.shape.get(1).copied().unwrap_or(1);
                    probs.extend(t.to_values::<f32>().ok_or("probabilities are not FP32")?);
                }
                match self.label_at {
                    Some(l) => out.labels.extend(labels_of(&outputs[l])?),
                    None => {
                        let chunk = &probs[probs.len() - n * classes..];
                        out.labels
                            .extend(chunk.chunks(classes).map(|r| argmax(r).to_string()));
                    }
                }
            } else {
                let t = &outputs[self.value_at.unwrap_or(0)];
                out.values.extend(
                    t.to_values::<f32>()
                        .ok_or("the value is not FP32")?
                        .iter()
                        .map(|v| *v as f64),
                );
            }
        }
        if self.classify && self.prob_at.is_some() {
            out.probabilities = Some((classes, probs));
        }
        Ok(out)
    }
}

fn labels_of(t: &Tensor) -> Result<Vec<String>, String> {
    match t.dtype {
        DataType::Int64 => Ok(t
            .to_values::<i64>()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_string())
            .collect()),
        DataType::Int32 => Ok(t
            .to_values::<i32>()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_string())
            .collect()),
        DataType::Fp32 => Ok(t
            .to_values::<f32>()
            .unwrap_or_default()
            .iter()
            .map(|v| format_number(*v as f64))
            .collect()),
        DataType::Bytes => match &t.data {
            cairn_core::tensor::TensorData::Bytes(items) => Ok(items
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()),
            _ => Err("a BYTES label without items".into()),
        },
        other => Err(format!("a label output of type {other} cannot be read")),
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// A model's quality on a set of rows; `None` where undefined for the task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub rows: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_macro: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
}

impl Scores {
    pub fn get(&self, metric: crate::config::GateMetric) -> Option<f64> {
        use crate::config::GateMetric as M;
        match metric {
            M::Accuracy => self.accuracy,
            M::F1Macro => self.f1_macro,
            M::LogLoss => self.log_loss,
            M::Rmse => self.rmse,
            M::Mae => self.mae,
        }
    }
}

/// Classification scores; `classes` names the probability columns in order.
pub fn classification(truth: &[String], p: &Predictions, classes: &[String]) -> Scores {
    let q = cairn_monitor::quality::classification(truth, &p.labels, None).ok();
    let m = match q.map(|q| q.metrics) {
        Some(cairn_monitor::quality::Metrics::Classification(m)) => Some(m),
        _ => None,
    };
    let mut s = Scores {
        rows: truth.len(),
        accuracy: m.and_then(|m| m.accuracy),
        f1_macro: m.and_then(|m| m.f1_macro),
        ..Scores::default()
    };
    if let Some((k, probs)) = &p.probabilities {
        if *k == classes.len() && *k > 0 {
            // scikit-learn's log_loss: probabilities clipped to [eps, 1 - eps].
            let eps = f64::EPSILON;
            let mut sum = 0.0;
            let mut ok = true;
            for (row, t) in probs.chunks(*k).zip(truth) {
                match classes.iter().position(|c| c == t) {
                    Some(j) => sum -= (row[j] as f64).clamp(eps, 1.0 - eps).ln(),
                    None => ok = false,
                }
            }
            if ok && !truth.is_empty() {
                s.log_loss = Some(sum / truth.len() as f64);
            }
            if *k == 2 {
                let scores: Vec<f64> = probs.chunks(2).map(|r| r[1] as f64).collect();
                s.roc_auc = cairn_monitor::quality::roc_auc(truth, &scores);
            }
        }
    }
    s
}

/// Regression scores.
pub fn regression(truth: &[f64], p: &Predictions) -> Scores {
    Scores {
        rows: truth.len(),
        rmse: cairn_monitor::quality::rmse(truth, &p.values),
        mae: cairn_monitor::quality::mae(truth, &p.values),
        ..Scores::default()
    }
}
