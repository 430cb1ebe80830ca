//! Live quality of a window of matched feedback, from `cairn_monitor::quality`.
//!
//! The names the window carries (`accuracy`, `precision`, `recall`, `f1`, `roc_auc`, `mae`,
//! `rmse`) are the ones the endpoint and the `cairn_quality` gauge carry; the definitions are
//! scikit-learn's.

use cairn_monitor::quality::{ClassificationScores, RegressionScores, Scored};

/// Classification quality of matched feedback: accuracy, macro precision/recall/F1, and ROC AUC
/// when every row has a score and the problem is binary.
pub(super) fn classification(
    truth: &[String],
    predicted: &[String],
    scores: &[Option<f64>],
) -> Scored<ClassificationScores> {
    let scores: Option<Vec<f64>> = scores.iter().copied().collect();
    Scored::classification(truth, predicted, scores.as_deref())
}

/// Regression quality: MAE and RMSE.
pub(super) fn regression(targets: &[f64], values: &[f64]) -> Scored<RegressionScores> {
    Scored::regression(targets, values)
}
