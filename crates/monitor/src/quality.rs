//! Live quality from ground truth: how good the predictions were once the true outcomes arrived.
//!
//! Pure functions of (truth, prediction) pairs, each defined as scikit-learn defines it:
//!
//! | here | scikit-learn |
//! |---|---|
//! | [`accuracy`] | `accuracy_score(y_true, y_pred)` |
//! | [`macro_scores`] | `precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)` |
//! | [`roc_auc`] | `roc_auc_score(y_true, score)` (binary) |
//! | [`mae`] | `mean_absolute_error(y_true, y_pred)` |
//! | [`rmse`] | `sqrt(mean_squared_error(y_true, y_pred))` |
//!
//! Labels are any `Ord` type (integers, strings); they are compared, never parsed. A metric that
//! is undefined for its input is `None`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::stats::sum::pairwise_sum;

/// Live quality of a batch of predictions with their ground truth.
///
/// Serializes as `{"rows": 200, "task": "classification", "accuracy": …, "precision_macro": …,
/// "recall_macro": …, "f1_macro": …, "roc_auc": …}` or `{"rows": 200, "task": "regression",
/// "mae": …, "rmse": …}`; an undefined metric is `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// The rows the metrics were computed over.
    pub rows: u64,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// The metrics of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Metrics {
    Classification(ClassificationMetrics),
    Regression(RegressionMetrics),
}

/// Classification metrics; `None` where undefined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub accuracy: Option<f64>,
    pub precision_macro: Option<f64>,
    pub recall_macro: Option<f64>,
    pub f1_macro: Option<f64>,
    /// Binary problems with scores only.
    pub roc_auc: Option<f64>,
}

/// Regression metrics; `None` where undefined (no rows).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
}

/// Inputs that do not pair up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QualityError {
    #[error("{what} has {got} values for {expected} true values")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), QualityError> {
    if expected == got {
        Ok(())
    } else {
        Err(QualityError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Classification quality of `y_pred` against `y_true`, with ROC AUC when `scores` (the
/// positive class's score per row) are given and the problem is binary.
pub fn classification<L: Ord>(
    y_true: &[L],
    y_pred: &[L],
    scores: Option<&[f64]>,
) -> Result<Quality, QualityError> {
    let (rows, m) = classification_metrics(y_true, y_pred, scores)?;
    Ok(Quality {
        rows,
        metrics: Metrics::Classification(m),
    })
}

/// [`classification`] with the rows apart, for callers that name the metrics their own way.
fn classification_metrics<L: Ord>(
    y_true: &[L],
    y_pred: &[L],
    scores: Option<&[f64]>,
) -> Result<(u64, ClassificationMetrics), QualityError> {
    check_len("y_pred", y_true.len(), y_pred.len())?;
    if let Some(scores) = scores {
        check_len("scores", y_true.len(), scores.len())?;
    }
    let macro_scores = macro_scores(y_true, y_pred);
    let metrics = ClassificationMetrics {
        accuracy: accuracy(y_true, y_pred),
        precision_macro: macro_scores.map(|m| m.precision),
        recall_macro: macro_scores.map(|m| m.recall),
        f1_macro: macro_scores.map(|m| m.f1),
        roc_auc: scores.and_then(|s| roc_auc(y_true, s)),
    };
    Ok((y_true.len() as u64, metrics))
}

/// Regression quality of `y_pred` against `y_true`. A pair where either value is NaN or infinite
/// is missing and skipped (scikit-learn rejects such input); `rows` counts the pairs used.
pub fn regression(y_true: &[f64], y_pred: &[f64]) -> Result<Quality, QualityError> {
    let (rows, m) = regression_metrics(y_true, y_pred)?;
    Ok(Quality {
        rows,
        metrics: Metrics::Regression(m),
    })
}

/// [`regression`] with the rows apart.
fn regression_metrics(
    y_true: &[f64],
    y_pred: &[f64],
) -> Result<(u64, RegressionMetrics), QualityError> {
    check_len("y_pred", y_true.len(), y_pred.len())?;
    let (t, p): (Vec<f64>, Vec<f64>) = y_true
        .iter()
        .zip(y_pred)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(&a, &b)| (a, b))
        .unzip();
    let metrics = RegressionMetrics {
        mae: mae(&t, &p),
        rmse: rmse(&t, &p),
    };
    Ok((t.len() as u64, metrics))
}

/// One window of live quality as the server publishes it: the quality endpoint, the report
/// files and the drift page all read this shape,
/// `{"model", "version", "from", "to", "classification"?, "regression"?, "rows"}`.
///
/// A window holds whichever tasks its feedback had; the metric names are the ones the endpoint
/// and the `cairn_quality` gauge carry (`precision`, not `precision_macro`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityWindow {
    pub model: String,
    pub version: u64,
    /// The first and last feedback matched, RFC 3339.
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Scored<ClassificationScores>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<Scored<RegressionScores>>,
    /// Rows matched, of both tasks.
    pub rows: u64,
    /// Set only where a page shows the window still filling beside the closed ones; published
    /// windows leave the key out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filling: bool,
}

/// A task's metrics, or why they could not be computed: a window's JSON carries either, under
/// the task's key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scored<T> {
    Scores(T),
    Error { error: String },
}

/// A window's classification metrics; `None` where undefined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationScores {
    pub rows: u64,
    pub accuracy: Option<f64>,
    /// Macro-averaged, as are `recall` and `f1`.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub roc_auc: Option<f64>,
}

/// A window's regression metrics; `None` where undefined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionScores {
    pub rows: u64,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
}

impl<T> Scored<T> {
    pub fn scores(&self) -> Option<&T> {
        match self {
            Scored::Scores(scores) => Some(scores),
            Scored::Error { .. } => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Scored::Scores(_) => None,
            Scored::Error { error } => Some(error),
        }
    }
}

impl Scored<ClassificationScores> {
    /// [`classification`], under the window's names.
    pub fn classification<L: Ord>(y_true: &[L], y_pred: &[L], scores: Option<&[f64]>) -> Self {
        match classification_metrics(y_true, y_pred, scores) {
            Ok((rows, m)) => Scored::Scores(ClassificationScores {
                rows,
                accuracy: m.accuracy,
                precision: m.precision_macro,
                recall: m.recall_macro,
                f1: m.f1_macro,
                roc_auc: m.roc_auc,
            }),
            Err(e) => Scored::Error {
                error: e.to_string(),
            },
        }
    }
}

impl Scored<RegressionScores> {
    /// [`regression`], under the window's names.
    pub fn regression(y_true: &[f64], y_pred: &[f64]) -> Self {
        match regression_metrics(y_true, y_pred) {
            Ok((rows, m)) => Scored::Scores(RegressionScores {
                rows,
                mae: m.mae,
                rmse: m.rmse,
            }),
            Err(e) => Scored::Error {
                error: e.to_string(),
            },
        }
    }
}

/// The share of rows predicted right (`accuracy_score`). `None` when there are no rows or the
/// lengths differ.
pub fn accuracy<L: PartialEq>(y_true: &[L], y_pred: &[L]) -> Option<f64> {
    if y_true.is_empty() || y_true.len() != y_pred.len() {
        return None;
    }
    let right = y_true.iter().zip(y_pred).filter(|(t, p)| t == p).count();
    Some(right as f64 / y_true.len() as f64)
}

/// Macro-averaged precision, recall and F1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MacroScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// `precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)`: per label
/// of the sorted union of labels in `y_true` and `y_pred`, precision `tp / predicted`, recall
/// `tp / true` and F1 `2·tp / (true + predicted)` (0 where the denominator is 0), then their
/// unweighted means. A label that only occurs in the predictions therefore counts, with recall
/// 0. `None` when there are no rows or the lengths differ.
pub fn macro_scores<L: Ord>(y_true: &[L], y_pred: &[L]) -> Option<MacroScores> {
    if y_true.is_empty() || y_true.len() != y_pred.len() {
        return None;
    }
    #[derive(Default)]
    struct Counts {
        tp: u64,
        predicted: u64,
        actual: u64,
    }
    let mut per_label: BTreeMap<&L, Counts> = BTreeMap::new();
    for (t, p) in y_true.iter().zip(y_pred) {
        per_label.entry(t).or_default().actual += 1;
        per_label.entry(p).or_default().predicted += 1;
        if t == p {
            per_label.entry(t).or_default().tp += 1;
        }
    }
    let divide = |num: f64, den: f64| if den == 0.0 { 0.0 } else { num / den };
    let (mut precision, mut recall, mut f1) = (Vec::new(), Vec::new(), Vec::new());
    for c in per_label.values() {
        let (tp, predicted, actual) = (c.tp as f64, c.predicted as f64, c.actual as f64);
        precision.push(divide(tp, predicted));
        recall.push(divide(tp, actual));
        f1.push(divide(2.0 * tp, actual + predicted));
    }
    let mean = |v: &[f64]| pairwise_sum(v) / v.len() as f64;
    Some(MacroScores {
        precision: mean(&precision),
        recall: mean(&recall),
        f1: mean(&f1),
    })
}

/// `roc_auc_score(y_true, scores)` for a binary problem: the positive class is the greater of
/// the two labels (scikit-learn's `label_binarize` order), and the area is the trapezoidal area
/// under the ROC curve with one point per distinct score, so tied scores count half.
///
/// `None` when `y_true` does not hold exactly two labels (one class: scikit-learn's undefined
/// NaN; more: a multiclass AUC needs a score per class), the lengths differ, or a score is NaN or
/// infinite (scikit-learn rejects those).
pub fn roc_auc<L: Ord>(y_true: &[L], scores: &[f64]) -> Option<f64> {
    if y_true.len() != scores.len() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let labels: BTreeSet<&L> = y_true.iter().collect();
    if labels.len() != 2 {
        return None;
    }
    let positive = *labels.last()?;
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .zip(y_true)
        .map(|(&s, t)| (s, t == positive))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (fps, tps) = roc_points(&pairs);
    let (fps, tps) = drop_collinear(&fps, &tps);
    let (last_fp, last_tp) = (*fps.last()?, *tps.last()?);
    let fpr: Vec<f64> = std::iter::once(0.0)
        .chain(fps.iter().map(|f| f / last_fp))
        .collect();
    let tpr: Vec<f64> = std::iter::once(0.0)
        .chain(tps.iter().map(|t| t / last_tp))
        .collect();
    let terms: Vec<f64> = fpr
        .windows(2)
        .zip(tpr.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
        .collect();
    Some(pairwise_sum(&terms))
}

/// Cumulative false and true positives at each distinct score, highest score first
/// (`_binary_clf_curve`).
fn roc_points(pairs: &[(f64, bool)]) -> (Vec<f64>, Vec<f64>) {
    let (mut fps, mut tps) = (Vec::new(), Vec::new());
    let (mut fp, mut tp) = (0u64, 0u64);
    for (i, &(score, positive)) in pairs.iter().enumerate() {
        if positive {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_group = pairs.get(i + 1).is_none_or(|next| next.0 != score);
        if last_of_group {
            fps.push(fp as f64);
            tps.push(tp as f64);
        }
    }
    (fps, tps)
}

/// `roc_curve(drop_intermediate=True)`: drops points collinear with their neighbours (where
/// neither second difference is non-zero), keeping both ends.
fn drop_collinear(fps: &[f64], tps: &[f64]) -> (Vec<f64>, Vec<f64>) {
    if fps.len() <= 2 {
        return (fps.to_vec(), tps.to_vec());
    }
    let last = fps.len() - 1;
    let keep = |i: usize| {
        i == 0
            || i == last
            || fps[i + 1] - 2.0 * fps[i] + fps[i - 1] != 0.0
            || tps[i + 1] - 2.0 * tps[i] + tps[i - 1] != 0.0
    };
    (0..fps.len())
        .filter(|&i| keep(i))
        .map(|i| (fps[i], tps[i]))
        .unzip()
}

/// `mean_absolute_error`: the mean of `|y_true − y_pred|`. `None` when there are no rows or the
/// lengths differ.
pub fn mae(y_true: &[f64], y_pred: &[f64]) -> Option<f64> {
    mean_of(y_true, y_pred, |d| d.abs())
}

/// `sqrt(mean_squared_error)`: the root of the mean of `(y_true − y_pred)²`. `None` when there
/// are no rows or the lengths differ.
pub fn rmse(y_true: &[f64], y_pred: &[f64]) -> Option<f64> {
    mean_of(y_true, y_pred, |d| d * d).map(f64::sqrt)
}

fn mean_of(y_true: &[f64], y_pred: &[f64], f: impl Fn(f64) -> f64) -> Option<f64> {
    if y_true.is_empty() || y_true.len() != y_pred.len() {
        return None;
    }
    let terms: Vec<f64> = y_true.iter().zip(y_pred).map(|(t, p)| f(p - t)).collect();
    Some(pairwise_sum(&terms) / terms.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_perfect_and_inverted() {
        assert_eq!(roc_auc(&[0, 0, 1, 1], &[0.1, 0.2, 0.8, 0.9]), Some(1.0));
        assert_eq!(roc_auc(&[0, 0, 1, 1], &[0.9, 0.8, 0.2, 0.1]), Some(0.0));
        assert_eq!(roc_auc(&[0, 1], &[0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[1, 1], &[0.5, 0.7]), None);
        assert_eq!(roc_auc(&[0, 1], &[0.5, f64::NAN]), None);
        assert_eq!(roc_auc(&[0, 1, 2], &[0.1, 0.5, 0.7]), None);
    }

    #[test]
    fn empty_and_mismatched_inputs() {
        let empty: [i32; 0] = [];
        let q = classification(&empty, &empty, None).unwrap();
        assert_eq!(q.rows, 0);
        assert!(classification(&[1], &[1, 2], None).is_err());
        assert!(classification(&[1], &[1], Some(&[0.1, 0.2])).is_err());
        assert_eq!(mae(&[], &[]), None);
        let q = regression(&[1.0, f64::NAN], &[2.0, 3.0]).unwrap();
        assert_eq!(q.rows, 1);
    }

    #[test]
    fn a_window_writes_only_the_tasks_it_has() {
        let window = QualityWindow {
            model: "iris".into(),
            version: 2,
            from: "2026-12-01T10:00:00.000000Z".into(),
            to: "2026-12-01T10:05:00.000000Z".into(),
            classification: Some(Scored::classification(&[1, 0], &[1, 1], Some(&[0.9, 0.2]))),
            regression: None,
            rows: 2,
            filling: false,
        };
        let json = serde_json::to_value(&window).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "iris", "version": 2, "from": "2026-12-01T10:00:00.000000Z",
                "to": "2026-12-01T10:05:00.000000Z", "rows": 2,
                "classification": {"rows": 2, "accuracy": 0.5, "precision": 0.25,
                                   "recall": 0.5, "f1": 1.0 / 3.0, "roc_auc": 1.0}
            })
        );
        let back: QualityWindow = serde_json::from_value(json).unwrap();
        assert_eq!(back, window);

        let filling = QualityWindow {
            classification: None,
            regression: Some(Scored::regression(&[1.0], &[1.0, 2.0])),
            filling: true,
            ..window
        };
        let json = serde_json::to_value(&filling).unwrap();
        assert_eq!(json["filling"], true);
        assert_eq!(
            json["regression"],
            serde_json::json!({"error": "y_pred has 2 values for 1 true values"})
        );
        assert!(json.get("classification").is_none());
        let back: QualityWindow = serde_json::from_value(json).unwrap();
        assert_eq!(back, filling);
    }
}
