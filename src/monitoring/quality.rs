//! Live quality as the quality endpoint and metrics report it, from `cairn_monitor::quality`.
//!
//! The names here (`accuracy`, `precision`, `recall`, `f1`, `roc_auc`, `mae`, `rmse`) are the
//! ones the endpoint and the `cairn_quality` gauge carry; the definitions are scikit-learn's.

use cairn_monitor::quality;
use serde_json::{json, Value};

/// Classification quality of matched feedback: accuracy, macro precision/recall/F1, and ROC AUC
/// when every row has a score and the problem is binary.
pub(super) fn classification(
    truth: &[String],
    predicted: &[String],
    scores: &[Option<f64>],
) -> Value {
    let scores: Option<Vec<f64>> = scores.iter().copied().collect();
    match quality::classification(truth, predicted, scores.as_deref()) {
        Ok(quality::Quality {
            rows,
            metrics: quality::Metrics::Classification(m),
        }) => json!({
            "rows": rows,
            "accuracy": m.accuracy,
            "precision": m.precision_macro,
            "recall": m.recall_macro,
            "f1": m.f1_macro,
            "roc_auc": m.roc_auc,
        }),
        Ok(_) => json!({}),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// Regression quality: MAE and RMSE.
pub(super) fn regression(targets: &[f64], values: &[f64]) -> Value {
    match quality::regression(targets, values) {
        Ok(quality::Quality {
            rows,
            metrics: quality::Metrics::Regression(m),
        }) => json!({ "rows": rows, "mae": m.mae, "rmse": m.rmse }),
        Ok(_) => json!({}),
        Err(e) => json!({ "error": e.to_string() }),
    }
}
