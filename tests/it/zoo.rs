//! Tree ensembles from real exporters (skl2onnx, onnxmltools for XGBoost and LightGBM) and
//! hand-written ones (`tests/models/zoo`, made by its `generate.py`): every model, on every
//! engine this machine runs, gives onnxruntime's recorded answers. Labels (integers and
//! strings) must be equal; scores within 1e-5 (relative, 1e-5 absolute near 0). A wrong label
//! with a 200 is the failure this exists to catch, so the HTTP path is checked too.

use std::path::Path;

use http::StatusCode;
use serde_json::Value;

use crate::common;
use crate::engine_conformance::{kinds, tensor_from_json, tensor_to_json};

use cairn::engine::{self, BatchInput, EngineKind, LoadOptions};
use cairn::tensor::Tensor;

fn zoo_expected() -> serde_json::Map<String, Value> {
    let path = common::root().join("tests/models/zoo/expected.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// The zoo models' names, from their paths (`tests/models/zoo/<name>/1/model.onnx`).
fn model_name(rel: &str) -> &str {
    Path::new(rel)
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap()
}

/// Compares one output, collecting a line per difference rather than stopping at the first:
/// a failing run then lists every model that answers wrong.
fn compare(what: &str, got: &Value, want: &Value, failures: &mut Vec<String>) {
    if got["datatype"] != want["datatype"] || got["shape"] != want["shape"] {
        failures.push(format!(
            "{what}: {} {} where onnxruntime gives {} {}",
            got["datatype"], got["shape"], want["datatype"], want["shape"]
        ));
        return;
    }
    let float = matches!(want["datatype"].as_str(), Some("FP32" | "FP64"));
    let g = common::flatten(&got["data"]);
    let w = common::flatten(&want["data"]);
    let wrong: Vec<usize> = (0..w.len())
        .filter(|&i| {
            if float {
                let (x, y) = (g[i].as_f64().unwrap(), w[i].as_f64().unwrap());
                (x - y).abs() > 1e-5 * y.abs().max(1.0)
            } else {
                g[i] != w[i]
            }
        })
        .collect();
    if let Some(&first) = wrong.first() {
        failures.push(format!(
            "{what}: {} of {} values differ, first [{first}]: {} where onnxruntime gives {} \
             (all: {} vs {})",
            wrong.len(),
            w.len(),
            g[first],
            w[first],
            got["data"],
            want["data"]
        ));
    }
}

fn run_zoo(kind: EngineKind, failures: &mut Vec<String>) {
    for (rel, cases) in &zoo_expected() {
        let what = format!("{} on {}", model_name(rel), kind.as_str());
        let loaded = engine::load(
            &common::root().join(rel),
            &LoadOptions {
                kind,
                batch_dim: true,
                ..LoadOptions::default()
            },
        );
        let engine = match loaded {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{what}: load error: {e}"));
                continue;
            }
        };
        let sig = engine.signature().clone();
        let mut session = engine.new_session().unwrap();
        for (i, case) in cases.as_array().unwrap().iter().enumerate() {
            let inputs: Vec<Tensor> = sig
                .inputs
                .iter()
                .map(|spec| tensor_from_json(&case["inputs"][&spec.name]))
                .collect();
            let batch: Vec<BatchInput<'_>> = inputs
                .iter()
                .map(|t| BatchInput {
                    shape: t.shape.clone(),
                    parts: vec![t],
                })
                .collect();
            session.set_inputs(&batch).unwrap();
            let outputs = match session.run() {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("{what} case {i}: run error: {e}"));
                    continue;
                }
            };
            for (spec, out) in sig.outputs.iter().zip(&outputs) {
                compare(
                    &format!("{what} case {i} {}", spec.name),
                    &tensor_to_json(out),
                    &case["outputs"][&spec.name],
                    failures,
                );
            }
        }
    }
}

#[test]
fn every_zoo_model_matches_onnxruntime_on_every_engine() {
    let expected = zoo_expected();
    assert!(expected.len() >= 60, "zoo models are missing");
    for name in [
        "rf-binary",
        "dt-binary",
        "gb-binary",
        "hgb-binary-nan",
        "xgb-binary",
        "xgb-regressor",
        "lgbm-binary",
        "lgbm-regressor",
        "rf-string-labels",
    ] {
        let rel = format!("tests/models/zoo/{name}/1/model.onnx");
        assert!(expected.contains_key(&rel), "{rel} is not in the zoo");
    }
    let mut failures = Vec::new();
    for kind in kinds() {
        run_zoo(kind, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} differences from onnxruntime:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The models whose labels tract 0.23's own operator got wrong with a 200 (binary forests: all
/// 0; LightGBM binary: inverted) or refused (boosted binaries, regressors), served end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_models_answer_onnxruntimes_labels_over_http() {
    let names = [
        "rf-binary",
        "lgbm-binary",
        "xgb-binary",
        "rf-string-labels",
        "gb-regressor",
    ];
    let repo = common::Repo::with(&[]);
    for name in names {
        repo.add_as(&format!("zoo/{name}"), name);
    }
    let s = common::TestServer::start(repo).await;
    let expected = zoo_expected();
    let mut failures = Vec::new();
    for name in names {
        let rel = format!("tests/models/zoo/{name}/1/model.onnx");
        let meta = s.get(&format!("/v2/models/{name}")).await;
        assert_eq!(meta.status, StatusCode::OK, "{name}: {:?}", meta.body);
        for (i, case) in expected[&rel].as_array().unwrap().iter().enumerate() {
            let r = s
                .post_json(
                    &format!("/v2/models/{name}/infer"),
                    &common::request_from_case(case),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{name} case {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let v = r.json();
            for out in v["outputs"].as_array().unwrap() {
                let output = out["name"].as_str().unwrap();
                compare(
                    &format!("{name} case {i} {output} over HTTP"),
                    out,
                    &case["outputs"][output],
                    &mut failures,
                );
            }
        }
    }
    s.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
