//! Criterion benches of the parts: the CPU engine alone (the in-process floor every server
//! figure is read against) and the V2 codec.
//!
//! Run: `cargo bench --bench engine`

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cairn::engine::{self, BatchInput, LoadOptions};
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
                        },
                        ResponseOutput {
                            name: "probabilities",
                            tensor: &probs,
                            binary: binary_out,
                        },
                    ],
                };
                black_box(encode_response(&resp).body.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine_floor, codec);
criterion_main!(benches);
