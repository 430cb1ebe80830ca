//! The model zoo (`tests/models/zoo`, made by its `generate.py` and `pipelines.py`): tree
//! ensembles from real exporters (skl2onnx, onnxmltools for XGBoost and LightGBM), scikit-learn
//! pipelines (scalers, imputers, one-hot columns with one input per column, linear models,
//! SVMs, text, ZipMap, k-means), a torch-style graph with intermediate shapes, and hand-written
//! graphs for what exporters rarely write. Every model, on every engine this machine runs,
//! gives onnxruntime's recorded answers. Labels (integers and strings) must be equal; scores
//! within 1e-5 (relative, 1e-5 absolute near 0; FP16 outputs 1e-2). A wrong label with a 200 is the failure this
//! exists to catch, so the HTTP path is checked too.

use std::path::Path;

use http::StatusCode;
use serde_json::Value;

use crate::common;
use crate::engine_conformance::{kinds, run_case, tensor_from_json, tensor_to_json};

use cairn::engine::{self, EngineKind, LoadOptions};

/// The zoo: the committed one, or the one `CAIRN_ZOO_DIR` names (CI regenerates the zoo there
/// with the exporters' current releases, `generate.py --out`, and holds the engines to it).
fn zoo_dir() -> std::path::PathBuf {
    match std::env::var_os("CAIRN_ZOO_DIR") {
        Some(dir) => dir.into(),
        None => common::root().join("tests/models/zoo"),
    }
}

/// A model's file, from its key in expected.json (its path in the repository).
fn model_file(rel: &str) -> std::path::PathBuf {
    zoo_dir().join(model_name(rel)).join("1/model.onnx")
}

fn zoo_expected() -> serde_json::Map<String, Value> {
    let path = zoo_dir().join("expected.json");
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
    compare_within(what, got, want, None, failures)
}

/// `compare`, with the case's own tolerance for floats where it gives one (models that compute
/// in FP16 carry 1e-2 whatever their outputs' type).
fn compare_within(
    what: &str,
    got: &Value,
    want: &Value,
    case_tolerance: Option<f64>,
    failures: &mut Vec<String>,
) {
    if got["datatype"] != want["datatype"] || got["shape"] != want["shape"] {
        failures.push(format!(
            "{what}: {} {} where onnxruntime gives {} {}",
            got["datatype"], got["shape"], want["datatype"], want["shape"]
        ));
        return;
    }
    // Half precision rounds at every layer, and engines order their sums differently: 1e-2.
    let tolerance = match want["datatype"].as_str() {
        Some("FP32" | "FP64") => Some(case_tolerance.unwrap_or(1e-5)),
        Some("FP16") => Some(case_tolerance.unwrap_or(1e-2)),
        _ => None,
    };
    let g = common::flatten(&got["data"]);
    let w = common::flatten(&want["data"]);
    let wrong: Vec<usize> = (0..w.len())
        .filter(|&i| {
            if let Some(tolerance) = tolerance {
                let (x, y) = (g[i].as_f64().unwrap(), w[i].as_f64().unwrap());
                (x - y).abs() > tolerance * y.abs().max(1.0)
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
        check_model(kind, rel, cases, true, failures);
    }
}

/// A server on the named zoo models (their committed configs).
async fn serve_zoo(names: &[&str]) -> common::TestServer {
    let repo = common::Repo::with(&[]);
    for name in names {
        repo.add_as(&format!("zoo/{name}"), name);
    }
    common::TestServer::start(repo).await
}

/// Loads one zoo model on `kind` and holds every recorded case against onnxruntime's answers.
fn check_model(
    kind: EngineKind,
    rel: &str,
    cases: &Value,
    batch_dim: bool,
    failures: &mut Vec<String>,
) {
    let what = format!("{} on {}", model_name(rel), kind.as_str());
    let loaded = engine::load(
        &model_file(rel),
        &LoadOptions {
            kind,
            batch_dim,
            ..LoadOptions::default()
        },
    );
    let engine = match loaded {
        Ok(e) => e,
        Err(e) => {
            failures.push(format!("{what}: load error: {e}"));
            return;
        }
    };
    let sig = engine.signature().clone();
    let mut session = engine.new_session().unwrap();
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let outputs = match run_case(session.as_mut(), &sig, case) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{what} case {i}: run error: {e}"));
                continue;
            }
        };
        for (spec, out) in sig.outputs.iter().zip(&outputs) {
            compare_within(
                &format!("{what} case {i} {}", spec.name),
                &tensor_to_json(out),
                &case["outputs"][&spec.name],
                case["tolerance"].as_f64(),
                failures,
            );
        }
    }
}

#[test]
fn every_zoo_model_matches_onnxruntime_on_every_engine() {
    let expected = zoo_expected();
    assert!(expected.len() >= 130, "zoo models are missing");
    for name in [
        "scaler-logreg",
        "impute-scale-logreg",
        "columns-onehot",
        "logreg-string-labels",
        "linreg",
        "svc-rbf-proba",
        "svr",
        "linear-svc",
        "normalizer-binarizer",
        "tfidf-logreg",
        "zipmap-logreg",
        "kmeans",
        "torch-style",
        "torch-style-renamed",
        "rf-binary",
        "dt-binary",
        "gb-binary",
        "hgb-binary-nan",
        "xgb-binary",
        "xgb-regressor",
        "lgbm-binary",
        "lgbm-regressor",
        "rf-string-labels",
        "fp16-mlp",
        "fp16-mlp-fp32-io",
        "fp16-mlp-mixed",
        "fp16-cnn",
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
    let s = serve_zoo(&names).await;
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

/// Unbatched (max_batch_size = 0): skl2onnx leaves every input's leading dimension unnamed, so
/// each gets its own symbol and the one-input-per-column model cannot concatenate its columns;
/// tract loads it again with one symbol for them. The torch-style graph whose intermediate
/// shapes name the batch otherwise loads without them.
#[test]
fn one_input_per_column_and_renamed_batches_load_unbatched_too() {
    let expected = zoo_expected();
    let mut failures = Vec::new();
    for name in ["columns-onehot", "torch-style", "torch-style-renamed"] {
        let rel = format!("tests/models/zoo/{name}/1/model.onnx");
        for kind in kinds() {
            check_model(kind, &rel, &expected[&rel], false, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A classifier exported with skl2onnx's default ZipMap answers `[N, classes]` probabilities
/// on both engines, with its classes, in the ZipMap's order, in the signature.
#[test]
fn zipmap_outputs_carry_their_classes_on_every_engine() {
    use cairn::engine::ClassLabels;
    let cases = [
        ("zipmap-logreg", ClassLabels::Int(vec![0, 1, 2])),
        (
            "zipmap-string-labels",
            ClassLabels::Str(vec![
                "setosa".into(),
                "versicolor".into(),
                "virginica".into(),
            ]),
        ),
    ];
    for kind in kinds() {
        for (name, classes) in &cases {
            let path = common::root().join(format!("tests/models/zoo/{name}/1/model.onnx"));
            let engine = engine::load(
                &path,
                &LoadOptions {
                    kind,
                    batch_dim: true,
                    ..LoadOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name} on {}: {e}", kind.as_str()));
            let out = &engine.signature().outputs[1];
            assert_eq!(out.name, "output_probability");
            assert_eq!(out.dtype, cairn::tensor::DataType::Fp32, "{name}");
            assert_eq!(out.dims, [-1, 3], "{name} on {}", kind.as_str());
            assert_eq!(out.classes.as_ref(), Some(classes), "{name}");
            assert!(engine.signature().outputs[0].classes.is_none());
        }
    }
}

/// A V2 binary-extension request for a case: every input binary (NaN travels there, where JSON
/// has none), BYTES elements behind their lengths.
fn binary_request(case: &Value) -> (Vec<u8>, usize) {
    let mut inputs = Vec::new();
    let mut tail = Vec::new();
    for (name, t) in case["inputs"].as_object().unwrap() {
        let tensor = tensor_from_json(t);
        let before = tail.len();
        cairn::protocol::write_binary(&tensor, &mut tail);
        inputs.push(serde_json::json!({
            "name": name,
            "datatype": t["datatype"],
            "shape": t["shape"],
            "parameters": {"binary_data_size": tail.len() - before},
        }));
    }
    let mut body = serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap();
    let header_len = body.len();
    body.extend_from_slice(&tail);
    (body, header_len)
}

/// Posts a case to a model as a binary-extension request.
async fn post_binary(s: &common::TestServer, name: &str, case: &Value) -> common::Reply {
    let (body, header_len) = binary_request(case);
    let header_len = header_len.to_string();
    s.request(
        http::Method::POST,
        &format!("/v2/models/{name}/infer"),
        &[("inference-header-content-length", header_len.as_str())],
        body,
    )
    .await
}

/// Pipelines end to end: one input per column with BYTES columns and NaN (binary requests),
/// ZipMap outputs with their classes in metadata, configuration and every response, text, an
/// SVM; each answer onnxruntime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_answer_onnxruntimes_outputs_over_http() {
    let names = [
        "columns-onehot",
        "zipmap-logreg",
        "zipmap-string-labels",
        "tfidf-logreg",
        "svc-rbf-proba",
        "torch-style",
    ];
    let s = serve_zoo(&names).await;
    let expected = zoo_expected();
    let mut failures = Vec::new();
    for name in names {
        let rel = format!("tests/models/zoo/{name}/1/model.onnx");
        let meta = s.get(&format!("/v2/models/{name}")).await;
        assert_eq!(meta.status, StatusCode::OK, "{name}: {:?}", meta.body);
        for (i, case) in expected[&rel].as_array().unwrap().iter().enumerate() {
            let rows = case["inputs"].as_object().unwrap().values().next().unwrap()["shape"][0]
                .as_u64()
                .unwrap();
            if name == "torch-style" && rows > 8 {
                continue; // its max_batch_size is 8
            }
            let r = post_binary(&s, name, case).await;
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
                let classes = out["parameters"]["classes"].as_str();
                match (name, output) {
                    ("zipmap-logreg", "output_probability") => {
                        assert_eq!(classes, Some("[0,1,2]"), "{name}")
                    }
                    ("zipmap-string-labels", "output_probability") => assert_eq!(
                        classes,
                        Some(r#"["setosa","versicolor","virginica"]"#),
                        "{name}"
                    ),
                    _ => assert_eq!(classes, None, "{name} {output}"),
                }
            }
        }
    }
    let meta = s.get("/v2/models/zipmap-string-labels").await.json();
    let out = &meta["outputs"][1];
    assert_eq!(out["name"], "output_probability");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], serde_json::json!([-1, 3]));
    let classes: Vec<String> =
        serde_json::from_str(out["parameters"]["classes"].as_str().unwrap()).unwrap();
    assert_eq!(classes, ["setosa", "versicolor", "virginica"]);
    let config = s.get("/v2/models/zipmap-logreg/config").await.json();
    assert_eq!(
        config["parameters"]["output_probability.classes"]["string_value"],
        "[0,1,2]"
    );
    assert_eq!(config["output"][1]["dims"], serde_json::json!([3]));
    s.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// FP16 in and out over HTTP, in both encodings: JSON numbers (rounded to half precision on the
/// way in, widened on the way out) and the binary extension; a value beyond FP16's range is a
/// 400, not an infinity sent to the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_models_answer_in_json_and_binary() {
    let names = ["fp16-mlp", "fp16-cnn", "fp16-mlp-mixed"];
    let s = serve_zoo(&names).await;
    let expected = zoo_expected();
    let mut failures = Vec::new();
    for name in names {
        let rel = format!("tests/models/zoo/{name}/1/model.onnx");
        for (i, case) in expected[&rel].as_array().unwrap().iter().enumerate() {
            let json = s
                .post_json(
                    &format!("/v2/models/{name}/infer"),
                    &common::request_from_case(case),
                )
                .await;
            let binary = post_binary(&s, name, case).await;
            for (how, r) in [("JSON", json), ("binary", binary)] {
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{name} case {i} ({how}): {}",
                    String::from_utf8_lossy(&r.body)
                );
                for out in r.json()["outputs"].as_array().unwrap() {
                    let output = out["name"].as_str().unwrap();
                    compare_within(
                        &format!("{name} case {i} {output} ({how} request)"),
                        out,
                        &case["outputs"][output],
                        case["tolerance"].as_f64(),
                        &mut failures,
                    );
                }
            }
        }
    }
    let meta = s.get("/v2/models/fp16-mlp").await.json();
    assert_eq!(meta["inputs"][0]["datatype"], "FP16");
    assert_eq!(meta["outputs"][1]["datatype"], "FP16");
    let too_big = serde_json::json!({"inputs": [{"name": "x", "datatype": "FP16", "shape": [1, 6],
        "data": [1, 2, 3, 4, 5, 70000]}]});
    let r = s.post_json("/v2/models/fp16-mlp/infer", &too_big).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("out of range for FP16"),
        "{:?}",
        r.json()
    );
    s.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `auto` takes the first engine that loads the model, in order (onnxruntime, then tract), and
/// an engine that cannot serve a model refuses it at load: so where onnxruntime refuses, tract
/// serves, answering onnxruntime's own answers. skl2onnx's text pipelines ask for the
/// `en_US.UTF-8` locale, which most containers lack and onnxruntime then refuses the model
/// for; a locale no machine has stands for it here. A model no engine takes fails with every
/// engine's reason.
#[test]
fn auto_takes_the_first_engine_that_serves_the_model() {
    use cairn::engine::EngineKind;
    let rel = "tests/models/zoo/tfidf-logreg/1/model.onnx";
    let bytes = std::fs::read(model_file(rel)).unwrap();
    let (from, to) = (b"C.UTF-8".as_slice(), b"Q.UTF-8".as_slice());
    let at: Vec<usize> = (0..bytes.len() - from.len())
        .filter(|&i| &bytes[i..i + from.len()] == from)
        .collect();
    assert_eq!(at.len(), 1, "the locale is written once");
    let mut patched = bytes.clone();
    patched[at[0]..at[0] + to.len()].copy_from_slice(to);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, &patched).unwrap();
    let options = |kind| LoadOptions {
        kind,
        batch_dim: true,
        ..LoadOptions::default()
    };

    if kinds().contains(&EngineKind::Ort) {
        let Err(e) = engine::load(&path, &options(EngineKind::Ort)) else {
            panic!("onnxruntime loads a model whose locale is missing")
        };
        assert!(e.to_string().contains("locale"), "{e}");
    }
    let auto = engine::load(&path, &options(EngineKind::Auto)).unwrap();
    assert_eq!(auto.info().backend, "tract");
    let sig = auto.signature().clone();
    let mut session = auto.new_session().unwrap();
    let mut failures = Vec::new();
    for case in zoo_expected()[rel].as_array().unwrap() {
        let outputs = run_case(session.as_mut(), &sig, case).unwrap();
        for (spec, out) in sig.outputs.iter().zip(outputs) {
            compare(
                &format!("auto {}", spec.name),
                &tensor_to_json(&out),
                &case["outputs"][&spec.name],
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let corrupt = common::root().join("tests/models/corrupt/1/model.onnx");
    let Err(e) = engine::load(&corrupt, &options(EngineKind::Auto)) else {
        panic!("a corrupt model loads")
    };
    let e = e.to_string();
    assert!(e.contains("no engine serves it"), "{e}");
    assert!(e.contains("ort: ") && e.contains("tract: "), "{e}");
}
