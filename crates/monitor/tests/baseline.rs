//! `baseline.json`: the schema contract, round trips, rejection of inconsistent files and the
//! reservoir sample.

use cairn_monitor::baseline::{
    Baseline, BaselineError, BaselineOptions, FeatureBaseline, NumericBaseline, FORMAT,
};
use cairn_monitor::column::{Column, Columns};
use serde_json::{json, Value};

fn numeric(name: &str, values: Vec<f64>) -> (String, Column) {
    (name.to_string(), Column::Numeric(values))
}

fn categorical(name: &str, values: &[Option<&str>]) -> (String, Column) {
    let values = values.iter().map(|v| v.map(str::to_string)).collect();
    (name.to_string(), Column::Categorical(values))
}

fn example() -> Baseline {
    let features: Columns = vec![
        numeric("age", (0..150).map(|i| 20.0 + f64::from(i % 50)).collect()),
        numeric(
            "income",
            (0..150)
                .map(|i| {
                    if i % 10 == 0 {
                        f64::NAN
                    } else {
                        f64::from(i) * 1.5
                    }
                })
                .collect(),
        ),
        numeric("empty", vec![f64::NAN; 150]),
        categorical(
            "city",
            &(0..150)
                .map(|i| match i % 3 {
                    0 => Some("oslo"),
                    1 => Some("bergen"),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    ];
    let outputs: Columns = vec![numeric(
        "score",
        (0..150).map(|i| f64::from(i) / 150.0).collect(),
    )];
    Baseline::from_columns(&features, &outputs, &BaselineOptions::default())
}

fn numeric_of<'a>(b: &'a Baseline, name: &str) -> &'a NumericBaseline {
    match b.features.get(name).or_else(|| b.outputs.get(name)) {
        Some(FeatureBaseline::Numeric(n)) => n,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn json_round_trip_is_exact() {
    let baseline = example();
    let json = baseline.to_json().unwrap();
    assert_eq!(Baseline::from_json(&json).unwrap(), baseline);
}

#[test]
fn json_has_the_documented_schema() {
    let value: Value = serde_json::from_str(&example().to_json().unwrap()).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&value),
        ["feature_order", "features", "format", "outputs", "rows"]
    );
    assert_eq!(value["format"], 1);
    assert_eq!(value["rows"], 150);
    let age = &value["features"]["age"];
    assert_eq!(
        keys(age),
        [
            "count",
            "edges",
            "kind",
            "max",
            "mean",
            "min",
            "missing",
            "proportions",
            "sample",
            "sample_exact",
            "std"
        ]
    );
    assert_eq!(age["kind"], "numeric");
    assert_eq!(age["edges"].as_array().unwrap().len(), 9);
    assert_eq!(age["proportions"].as_array().unwrap().len(), 10);
    assert_eq!(age["sample_exact"], true);
    let income = &value["features"]["income"];
    assert_eq!(
        (income["count"].clone(), income["missing"].clone()),
        (json!(135), json!(15))
    );
    let empty = &value["features"]["empty"];
    assert_eq!(empty["min"], Value::Null);
    assert_eq!(empty["std"], Value::Null);
    assert_eq!(empty["edges"], json!([]));
    assert_eq!(empty["sample"], json!([]));
    let city = &value["features"]["city"];
    assert_eq!(keys(city), ["count", "frequencies", "kind", "missing"]);
    assert_eq!(city["frequencies"], json!({"bergen": 50, "oslo": 50}));
    assert_eq!(city["missing"], 50);
    assert_eq!(value["outputs"]["score"]["kind"], "numeric");
}

#[test]
fn summaries_use_all_values() {
    let b = example();
    let age = numeric_of(&b, "age");
    assert_eq!((age.min, age.max), (Some(20.0), Some(69.0)));
    assert_eq!(age.mean, Some(44.5));
    let sum: f64 = age.proportions.iter().sum();
    assert!((sum - 1.0).abs() < 1e-12);
    assert!(age.sample.windows(2).all(|p| p[0] <= p[1]));
}

#[test]
fn infinities_are_missing_and_short_columns_pad_with_missing() {
    let features = vec![
        numeric("x", vec![1.0, f64::INFINITY, f64::NEG_INFINITY, 2.0]),
        numeric("short", vec![1.0, 2.0]),
    ];
    let b = Baseline::from_columns(&features, &Vec::new(), &BaselineOptions::default());
    assert_eq!(b.rows, 4);
    let x = numeric_of(&b, "x");
    assert_eq!((x.count, x.missing), (2, 2));
    assert_eq!(x.sample, vec![1.0, 2.0]);
    let short = numeric_of(&b, "short");
    assert_eq!((short.count, short.missing), (2, 2));
    assert!(b.to_json().is_ok());
}

#[test]
fn reservoir_sample_is_deterministic_uniform_and_sorted() {
    let values: Vec<f64> = (0..50_000).map(f64::from).collect();
    let features = vec![numeric("x", values.clone())];
    let options = BaselineOptions {
        sample_size: 5_000,
        seed: 7,
    };
    let a = Baseline::from_columns(&features, &Vec::new(), &options);
    let again = Baseline::from_columns(&features, &Vec::new(), &options);
    assert_eq!(a, again, "same input and seed, same sample");
    let other_seed = Baseline::from_columns(
        &features,
        &Vec::new(),
        &BaselineOptions { seed: 8, ..options },
    );
    let (s, s2) = (numeric_of(&a, "x"), numeric_of(&other_seed, "x"));
    assert_ne!(s.sample, s2.sample, "another seed, another sample");
    assert!(!s.sample_exact);
    assert_eq!(s.sample.len(), 5_000);
    assert!(
        s.sample.windows(2).all(|p| p[0] < p[1]),
        "sorted, without repeats"
    );
    assert!(s
        .sample
        .iter()
        .all(|v| v.fract() == 0.0 && (0.0..50_000.0).contains(v)));
    // Uniform: each fifth of the range holds about a fifth of the sample (binomial sd ≈ 28).
    for k in 0..5 {
        let lo = f64::from(k) * 10_000.0;
        let n = s
            .sample
            .iter()
            .filter(|&&v| v >= lo && v < lo + 10_000.0)
            .count();
        assert!((850..=1150).contains(&n), "fifth {k}: {n}");
    }
    // Everything but the sample is computed from all values.
    let all = BaselineOptions {
        sample_size: 100_000,
        seed: 7,
    };
    let exact = Baseline::from_columns(&features, &Vec::new(), &all);
    let e = numeric_of(&exact, "x");
    assert!(e.sample_exact);
    assert_eq!(
        (s.mean, s.std, &s.edges, &s.proportions),
        (e.mean, e.std, &e.edges, &e.proportions)
    );
    assert_eq!((s.min, s.max), (Some(0.0), Some(49_999.0)));
    // The sampled baseline reads back as written.
    assert_eq!(Baseline::from_json(&a.to_json().unwrap()).unwrap(), a);
}

#[test]
fn sample_size_zero_keeps_one_value() {
    let features = vec![numeric("x", vec![3.0, 1.0, 2.0])];
    let options = BaselineOptions {
        sample_size: 0,
        seed: 0,
    };
    let b = Baseline::from_columns(&features, &Vec::new(), &options);
    assert_eq!(numeric_of(&b, "x").sample.len(), 1);
    assert!(b.to_json().is_ok());
}

/// The example's JSON, edited by `f`, then read back.
fn edited(f: impl FnOnce(&mut Value)) -> Result<Baseline, BaselineError> {
    let mut value: Value = serde_json::from_str(&example().to_json().unwrap()).unwrap();
    f(&mut value);
    Baseline::from_json(&value.to_string())
}

fn assert_inconsistent(result: Result<Baseline, BaselineError>, name: &str, needle: &str) {
    match result {
        Err(BaselineError::Inconsistent {
            name: n, problem, ..
        }) => {
            assert_eq!(n, name);
            assert!(problem.contains(needle), "{problem:?} lacks {needle:?}");
        }
        other => panic!("expected an inconsistency in {name}, got {other:?}"),
    }
}

#[test]
fn rejects_unknown_formats() {
    for format in [json!(2), json!("1"), json!(0), json!(1.5)] {
        let result = edited(|v| v["format"] = format.clone());
        assert!(
            matches!(result, Err(BaselineError::UnsupportedFormat { .. })),
            "{format}: {result:?}"
        );
    }
    let result = edited(|v| {
        v.as_object_mut().unwrap().remove("format");
    });
    assert!(matches!(result, Err(BaselineError::Json(_))));
    assert_eq!(FORMAT, 1);
}

#[test]
fn rejects_malformed_json_and_unknown_keys() {
    assert!(matches!(
        Baseline::from_json("{"),
        Err(BaselineError::Json(_))
    ));
    assert!(matches!(
        Baseline::from_json("[]"),
        Err(BaselineError::Json(_))
    ));
    assert!(matches!(
        edited(|v| v["extra"] = json!(1)),
        Err(BaselineError::Json(_))
    ));
    assert!(matches!(
        edited(|v| v["features"]["age"]["proportion"] = json!([])),
        Err(BaselineError::Json(_))
    ));
    assert!(matches!(
        edited(|v| v["features"]["age"]["kind"] = json!("text")),
        Err(BaselineError::Json(_))
    ));
    assert!(matches!(
        edited(|v| v["features"]["age"]["edges"][0] = Value::Null),
        Err(BaselineError::Json(_))
    ));
}

#[test]
fn rejects_inconsistent_numeric_features() {
    assert_inconsistent(
        edited(|v| {
            v["features"]["age"]["edges"].as_array_mut().unwrap().pop();
        }),
        "age",
        "8 edges",
    );
    assert_inconsistent(
        edited(|v| v["features"]["age"]["proportions"][0] = json!(0.5)),
        "age",
        "sum",
    );
    assert_inconsistent(
        edited(|v| {
            v["features"]["age"]["proportions"]
                .as_array_mut()
                .unwrap()
                .pop();
        }),
        "age",
        "proportions",
    );
    assert_inconsistent(
        edited(|v| v["features"]["age"]["count"] = json!(151)),
        "age",
        "rows",
    );
    assert_inconsistent(edited(|v| v["rows"] = json!(149)), "age", "rows");
    assert_inconsistent(
        edited(|v| {
            v["features"]["age"]["sample"].as_array_mut().unwrap().pop();
        }),
        "age",
        "sample_exact",
    );
    assert_inconsistent(
        edited(|v| v["features"]["age"]["sample"] = json!([])),
        "age",
        "sample",
    );
    assert_inconsistent(
        edited(|v| v["features"]["age"]["min"] = json!(100.0)),
        "age",
        "min",
    );
    assert_inconsistent(
        edited(|v| v["features"]["empty"]["edges"] = json!([1.0])),
        "empty",
        "no valid values",
    );
    assert_inconsistent(
        edited(|v| v["outputs"]["score"]["std"] = json!(-1.0)),
        "score",
        "negative",
    );
}

#[test]
fn rejects_inconsistent_categorical_features() {
    assert_inconsistent(
        edited(|v| v["features"]["city"]["frequencies"]["oslo"] = json!(49)),
        "city",
        "sum",
    );
    assert_inconsistent(
        edited(|v| {
            v["features"]["city"]["frequencies"]["x"] = json!(0);
        }),
        "city",
        "frequency 0",
    );
}

#[test]
fn to_json_refuses_what_from_json_would_reject() {
    let mut b = example();
    if let Some(FeatureBaseline::Numeric(n)) = b.features.get_mut("age") {
        n.edges[3] = f64::INFINITY;
    }
    assert!(matches!(
        b.to_json(),
        Err(BaselineError::Inconsistent { .. })
    ));
}

#[test]
fn empty_input_gives_an_empty_consistent_baseline() {
    let b = Baseline::from_columns(&Vec::new(), &Vec::new(), &BaselineOptions::default());
    assert_eq!(b.rows, 0);
    assert!(b.features.is_empty() && b.outputs.is_empty());
    assert_eq!(Baseline::from_json(&b.to_json().unwrap()).unwrap(), b);
    let b = Baseline::from_columns(
        &vec![numeric("x", Vec::new()), categorical("c", &[])],
        &Vec::new(),
        &BaselineOptions::default(),
    );
    assert_eq!(Baseline::from_json(&b.to_json().unwrap()).unwrap(), b);
}

#[test]
fn feature_order_keeps_the_data_order_and_must_name_every_feature() {
    let baseline = example();
    let mut names: Vec<&String> = baseline.features.keys().collect();
    names.sort();
    let mut order: Vec<&String> = baseline.feature_order.iter().collect();
    order.sort();
    assert_eq!(order, names, "every feature, once");
    let mut bad = baseline.clone();
    bad.feature_order.pop();
    assert!(bad.to_json().is_err(), "a missing feature");
    let mut bad = baseline.clone();
    bad.feature_order.push("nope".into());
    assert!(bad.to_json().is_err(), "an unknown one");
    // Optional: a file without it (written by another tool) still reads.
    let mut value: Value = serde_json::from_str(&baseline.to_json().unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("feature_order");
    let read = Baseline::from_json(&value.to_string()).unwrap();
    assert!(read.feature_order.is_empty());
}
