//! Live-quality metrics against scikit-learn reference values (`tests/fixtures/quality.json`).

mod common;

use cairn_monitor::quality::{self, ClassificationMetrics, Metrics, RegressionMetrics};
use common::{nan_for_null, Check};
use serde::Deserialize;
use serde_json::Value;

const FIXTURES: &str = include_str!("fixtures/quality.json");

#[derive(Deserialize)]
struct Fixtures {
    classification: Vec<ClassificationCase>,
    regression: Vec<RegressionCase>,
}

#[derive(Deserialize)]
struct ClassificationCase {
    name: String,
    /// "int" or "str": labels are compared as integers or as strings, as scikit-learn does.
    labels: String,
    y_true: Vec<Value>,
    y_pred: Vec<Value>,
    scores: Option<Vec<f64>>,
    expected: ClassificationExpected,
}

#[derive(Deserialize)]
struct ClassificationExpected {
    accuracy: f64,
    precision: f64,
    recall: f64,
    f1: f64,
    roc_auc: Option<f64>,
}

#[derive(Deserialize)]
struct RegressionCase {
    name: String,
    y_true: Vec<Option<f64>>,
    y_pred: Vec<Option<f64>>,
    expected: RegressionExpected,
}

#[derive(Deserialize)]
struct RegressionExpected {
    mae: f64,
    rmse: f64,
}

fn fixtures() -> Fixtures {
    serde_json::from_str(FIXTURES).expect("quality.json parses")
}

fn ints(values: &[Value]) -> Vec<i64> {
    values
        .iter()
        .map(|v| v.as_i64().expect("integer label"))
        .collect()
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.as_str().expect("string label").to_string())
        .collect()
}

fn classification_metrics(case: &ClassificationCase) -> ClassificationMetrics {
    let scores = case.scores.as_deref();
    let quality = match case.labels.as_str() {
        "int" => quality::classification(&ints(&case.y_true), &ints(&case.y_pred), scores),
        "str" => quality::classification(&strings(&case.y_true), &strings(&case.y_pred), scores),
        other => panic!("{}: unknown label type {other}", case.name),
    }
    .expect("lengths match");
    assert_eq!(quality.rows, case.y_true.len() as u64);
    match quality.metrics {
        Metrics::Classification(m) => m,
        Metrics::Regression(_) => panic!("{}: not classification", case.name),
    }
}

#[test]
fn classification_metrics_match_sklearn() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.classification {
        let name = &case.name;
        let e = &case.expected;
        let m = classification_metrics(case);
        check.opt_stat(format!("{name} accuracy"), m.accuracy, Some(e.accuracy));
        check.opt_stat(
            format!("{name} precision"),
            m.precision_macro,
            Some(e.precision),
        );
        check.opt_stat(format!("{name} recall"), m.recall_macro, Some(e.recall));
        check.opt_stat(format!("{name} f1"), m.f1_macro, Some(e.f1));
        check.opt_stat(format!("{name} roc_auc"), m.roc_auc, e.roc_auc);
    }
    check.finish(fx.classification.len() * 5);
}

#[test]
fn regression_metrics_match_sklearn() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.regression {
        let name = &case.name;
        let (t, p) = (nan_for_null(&case.y_true), nan_for_null(&case.y_pred));
        let quality = quality::regression(&t, &p).expect("lengths match");
        let Metrics::Regression(RegressionMetrics { mae, rmse }) = quality.metrics else {
            panic!("{name}: not regression");
        };
        check.equal(format!("{name} rows"), quality.rows, t.len() as u64);
        check.opt_stat(format!("{name} mae"), mae, Some(case.expected.mae));
        check.opt_stat(format!("{name} rmse"), rmse, Some(case.expected.rmse));
    }
    check.finish(fx.regression.len() * 3);
}

#[test]
fn quality_serializes_with_task_tag() {
    let q = quality::classification(&[1, 0, 1], &[1, 1, 1], None).unwrap();
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["rows"], 3);
    assert_eq!(json["task"], "classification");
    assert_eq!(json["roc_auc"], Value::Null);
    assert!(json.get("mae").is_none());
    let back: quality::Quality = serde_json::from_value(json).unwrap();
    assert_eq!(back, q);

    let q = quality::regression(&[1.0, 2.0], &[1.5, 2.0]).unwrap();
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["task"], "regression");
    assert_eq!(json["mae"], 0.25);
    assert!(json.get("accuracy").is_none());
}
