//! Criterion benches of the parts: the CPU engine alone (the in-process floor every server
//! figure is read against), a 500-tree ensemble on tract (our tree operators) against
//! onnxruntime in process, and the V2 codec.
//!
//! Run: `cargo bench --bench engine`. The tree bench needs its model, written to target/ by
//! `tests/models/zoo/generate.py --bench-model`, and onnxruntime's library (`ORT_DYLIB_PATH`, or
//! the wheel in `.venv`) for its ort side; without them it says so and measures what it can.

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cairn::engine::{self, BatchInput, EngineKind, LoadOptions};
use cairn::protocol::{decode_request, encode_response, InferResponse, ResponseOutput};
use cairn::tensor::Tensor;

fn rows(n: usize, width: usize) -> Vec<f32> {
    (0..n * width).map(|i| ((i as f32) * 0.618).sin()).collect()
}

fn engine_floor(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (model, width) in [("tabular-small", 32), ("mlp-large", 256)] {
        let path = root.join("models").join(model).join("1/model.onnx");
        let engine = engine::load(
            &path,
            &LoadOptions {
                batch_dim: true,
                ..LoadOptions::default()
            },
        )
        .expect("model loads");
        let mut session = engine.new_session().expect("session");
        let mut group = c.benchmark_group(format!("engine/{model}"));
        for batch in [1usize, 64] {
            let input = Tensor::from_values(vec![batch, width], &rows(batch, width)).unwrap();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("batch", batch), &input, |b, input| {
                b.iter(|| {
                    session
                        .set_inputs(&[BatchInput {
                            shape: input.shape.clone(),
                            parts: vec![input],
                        }])
                        .unwrap();
                    black_box(session.run().unwrap())
                })
            });
        }
        group.finish();
    }
}

/// onnxruntime's library: `ORT_DYLIB_PATH`, else the wheel's in `.venv` (as the tests find it).
fn ort_library(root: &Path) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(p.into());
    }
    std::fs::read_dir(root.join(".venv/lib"))
        .ok()?
        .flatten()
        .find_map(|py| {
            std::fs::read_dir(py.path().join("site-packages/onnxruntime/capi"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                })
        })
}

/// A 500-tree LightGBM binary classifier (31 leaves a tree, 32 features): tract with our tree
/// operators against onnxruntime, one thread each, on the same rows. The two must agree first.
fn trees(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("target/zoo-bench/lgbm-500/model.onnx");
    if !path.exists() {
        eprintln!(
            "trees: skipped, no {}: run tests/models/zoo/generate.py --bench-model",
            path.display()
        );
        return;
    }
    let mut kinds = vec![EngineKind::Tract];
    match ort_library(root) {
        Some(lib) => {
            engine::set_onnxruntime_library(lib);
            kinds.push(EngineKind::Ort);
        }
        None => eprintln!("trees: onnxruntime skipped (no library: set ORT_DYLIB_PATH)"),
    }
    let mut group = c.benchmark_group("trees/lgbm-500");
    let mut answers = Vec::new();
    for kind in kinds {
        let engine = engine::load(
            &path,
            &LoadOptions {
                kind,
                batch_dim: true,
                ..LoadOptions::default()
            },
        )
        .expect("the bench model loads");
        let mut session = engine.new_session().expect("session");
        for batch in [1usize, 64] {
            let input = Tensor::from_values(vec![batch, 32], &rows(batch, 32)).unwrap();
            let run = |session: &mut Box<dyn cairn::engine::Session>| {
                session
                    .set_inputs(&[BatchInput {
                        shape: input.shape.clone(),
                        parts: vec![&input],
                    }])
                    .unwrap();
                session.run().unwrap()
            };
            if batch == 64 {
                answers.push(run(&mut session));
            }
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(kind.as_str(), batch), |b| {
                b.iter(|| black_box(run(&mut session)))
            });
        }
    }
    group.finish();
    if let [tract, ort] = answers.as_slice() {
        assert_eq!(
            tract[0].data, ort[0].data,
            "labels of tract and onnxruntime"
        );
        let (p, q) = (
            tract[1].to_values::<f32>().unwrap(),
            ort[1].to_values::<f32>().unwrap(),
        );
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() <= 1e-5, "probabilities: {a} against {b}");
        }
    }
}

fn codec(c: &mut Criterion) {
    let data = rows(64, 32);
    let json = serde_json::to_vec(&serde_json::json!({
        "id": "1",
        "inputs": [{"name": "input", "shape": [64, 32], "datatype": "FP32", "data": data}],
    }))
    .unwrap();
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [64, 32], "datatype": "FP32",
                    "parameters": {"binary_data_size": 64 * 32 * 4}}],
        "parameters": {"binary_data_output": true},
    }))
    .unwrap();
    let mut binary = header.clone();
    binary.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    let labels = Tensor::from_values(vec![64], &vec![1i64; 64]).unwrap();
    let probs = Tensor::from_values(vec![64, 2], &rows(64, 2)).unwrap();

    let mut group = c.benchmark_group("protocol/64-row request+response");
    group.throughput(Throughput::Elements(64));
    for (name, body, header_len, binary_out) in [
        ("json", Bytes::from(json), None, false),
        ("binary", Bytes::from(binary), Some(header.len()), true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = decode_request(body.clone(), header_len).unwrap();
                black_box(&req);
                let resp = InferResponse {
                    model_name: "tabular-small",
                    model_version: "1".into(),
                    id: req.id.as_deref(),
                    outputs: vec![
                        ResponseOutput {
                            name: "label",
                            tensor: &labels,
                            binary: binary_out,
                            classes: None,
                        },
                        ResponseOutput {
                            name: "probabilities",
                            tensor: &probs,
                            binary: binary_out,
                            classes: None,
                        },
                    ],
                };
                black_box(encode_response(&resp).body.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine_floor, trees, codec);
criterion_main!(benches);
