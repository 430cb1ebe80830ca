//! Engine conformance: every test model, run in process on the engine alone, must give
//! onnxruntime's outputs (recorded in `tests/models/expected.json`) within 1e-5.

use crate::common;

use bytes::Bytes;
use serde_json::Value;

use cairn::config::Provider;
use cairn::engine::{self, BatchInput, EngineKind, LoadOptions};
use cairn::tensor::{DataType, Tensor, TensorData};

/// A V2 JSON tensor (`null` is NaN in float data: JSON has no NaN).
pub(crate) fn tensor_from_json(t: &Value) -> Tensor {
    let dtype = DataType::parse(t["datatype"].as_str().unwrap()).unwrap();
    let shape: Vec<usize> = t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = common::flatten(&t["data"]);
    match dtype {
        DataType::Fp32 => Tensor::from_values(
            shape,
            &data
                .iter()
                .map(|v| float_or_nan(v) as f32)
                .collect::<Vec<_>>(),
        ),
        DataType::Fp64 => {
            Tensor::from_values(shape, &data.iter().map(float_or_nan).collect::<Vec<_>>())
        }
        DataType::Fp16 => Tensor::from_values(
            shape,
            &data
                .iter()
                .map(|v| half::f16::from_f64(float_or_nan(v)))
                .collect::<Vec<_>>(),
        ),
        DataType::Int32 => Tensor::from_values(
            shape,
            &data
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect::<Vec<_>>(),
        ),
        DataType::Int64 => Tensor::from_values(
            shape,
            &data.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(),
        ),
        DataType::Bool => Tensor::from_values(
            shape,
            &data
                .iter()
                .map(|v| v.as_bool().unwrap())
                .collect::<Vec<_>>(),
        ),
        DataType::Bytes => Tensor::new(
            dtype,
            shape,
            TensorData::Bytes(
                data.iter()
                    .map(|v| Bytes::from(v.as_str().unwrap().to_string()))
                    .collect(),
            ),
        ),
        other => panic!("no test data of {other}"),
    }
    .unwrap()
}

fn float_or_nan(v: &Value) -> f64 {
    if v.is_null() {
        f64::NAN
    } else {
        v.as_f64().unwrap()
    }
}

pub(crate) fn tensor_to_json(t: &Tensor) -> Value {
    let data: Vec<Value> = match t.dtype {
        DataType::Fp32 => t
            .to_values::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| Value::from(v as f64))
            .collect(),
        DataType::Fp16 => t
            .to_values::<half::f16>()
            .unwrap()
            .into_iter()
            .map(|v| Value::from(v.to_f64()))
            .collect(),
        DataType::Fp64 => t
            .to_values::<f64>()
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        DataType::Int32 => t
            .to_values::<i32>()
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        DataType::Int64 => t
            .to_values::<i64>()
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        DataType::Bool => t
            .to_values::<bool>()
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        DataType::Bytes => match &t.data {
            TensorData::Bytes(items) => items
                .iter()
                .map(|b| Value::from(String::from_utf8_lossy(b).into_owned()))
                .collect(),
            TensorData::Fixed(_) => unreachable!(),
        },
        other => panic!("no comparison for {other}"),
    };
    serde_json::json!({"datatype": t.dtype.as_str(), "shape": t.shape, "data": data})
}

/// One recorded case (`expected.json`'s form) through an engine session: its inputs in the
/// signature's order, each as one part.
pub(crate) fn run_case(
    session: &mut dyn cairn::engine::Session,
    sig: &cairn::engine::Signature,
    case: &Value,
) -> Result<Vec<Tensor>, cairn::engine::EngineError> {
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
    session.set_inputs(&batch)?;
    session.run()
}

/// The engines this machine can run: tract always, ort when its library is found.
pub(crate) fn kinds() -> Vec<EngineKind> {
    let mut kinds = vec![EngineKind::Tract];
    if common::ort_library().is_some() {
        kinds.push(EngineKind::Ort);
    } else {
        eprintln!("skipped: the ort engine (no onnxruntime library; see README, Engines)");
    }
    kinds
}

#[test]
fn every_test_model_matches_onnxruntime() {
    let expected = common::expected();
    assert!(expected.len() >= 8, "reference cases are missing");
    for ((rel, cases), kind) in expected
        .iter()
        .flat_map(|case| kinds().into_iter().map(move |k| (case, k)))
    {
        let path = common::root().join(rel);
        let batch_dim = !rel.contains("/fixed/");
        let engine = engine::load(
            &path,
            &LoadOptions {
                kind,
                batch_dim,
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{rel} on {}: {e}", kind.as_str()));
        let sig = engine.signature().clone();
        let mut session = engine.new_session().unwrap();
        for (i, case) in cases.as_array().unwrap().iter().enumerate() {
            let outputs = run_case(session.as_mut(), &sig, case)
                .unwrap_or_else(|e| panic!("{rel} case {i}: {e}"));
            for (spec, out) in sig.outputs.iter().zip(&outputs) {
                let want = &case["outputs"][&spec.name];
                common::assert_tensor_close(
                    &format!("{rel} case {i} {}", spec.name),
                    &tensor_to_json(out),
                    want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn a_batch_of_parts_equals_the_parts_run_alone() {
    for kind in kinds() {
        batch_of_parts(kind);
    }
}

fn batch_of_parts(kind: EngineKind) {
    let path = common::root().join("models/tabular-small/1/model.onnx");
    let engine = engine::load(
        &path,
        &LoadOptions {
            kind,
            batch_dim: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut session = engine.new_session().unwrap();
    let rows: Vec<Tensor> = (0..5)
        .map(|r| {
            let values: Vec<f32> = (0..32)
                .map(|c| ((r * 32 + c) as f32 * 0.37).sin())
                .collect();
            Tensor::from_values(vec![1, 32], &values).unwrap()
        })
        .collect();
    session
        .set_inputs(&[BatchInput {
            shape: vec![5, 32],
            parts: rows.iter().collect(),
        }])
        .unwrap();
    let batched = session.run().unwrap();
    for (r, row) in rows.iter().enumerate() {
        session
            .set_inputs(&[BatchInput {
                shape: vec![1, 32],
                parts: vec![row],
            }])
            .unwrap();
        let alone = session.run().unwrap();
        for (b, a) in batched.iter().zip(&alone) {
            assert_eq!(b.slice_rows(r, 1).data, a.data, "row {r}");
        }
    }
}

#[test]
fn a_corrupt_file_is_a_load_error() {
    let path = common::root().join("tests/models/corrupt/1/model.onnx");
    let err = engine::load(&path, &LoadOptions::default())
        .err()
        .expect("corrupt model fails");
    assert!(err.to_string().contains("cannot load model"), "{err}");
}

#[test]
fn engine_choice_fallback_and_a_missing_library() {
    let path = common::root().join("models/tabular-small/1/model.onnx");
    let options = |kind, fallback_to_cpu| LoadOptions {
        kind,
        batch_dim: true,
        fallback_to_cpu,
        ..LoadOptions::default()
    };
    // Without a GPU the CUDA engine refuses with what is missing, or tract with fallback; on
    // a GPU host it loads and says which device it runs on.
    match engine::load(&path, &options(EngineKind::Cuda, false)) {
        Err(e) => {
            assert!(
                e.to_string()
                    .contains("no GPU for the CUDA engine: not found: libcuda"),
                "{e}"
            );
            let fell = engine::load(&path, &options(EngineKind::Cuda, true)).unwrap();
            assert_eq!(fell.info().backend, "tract");
        }
        Ok(cuda) => assert_eq!(cuda.info().device.triton_kind(), "KIND_GPU"),
    }
    // A model outside the CUDA engine's subset names the node either way.
    let iris1 = common::root().join("models/iris/1/model.onnx");
    let e = engine::load(&iris1, &options(EngineKind::Cuda, false))
        .err()
        .unwrap();
    assert!(e.to_string().contains("LinearClassifier"), "{e}");
    let fell = engine::load(&iris1, &options(EngineKind::Cuda, true)).unwrap();
    assert_eq!(fell.info().backend, "tract");
    // auto: CUDA on a GPU, else ort when its library loads, else tract; what it says about
    // itself is what ran.
    let auto = engine::load(&path, &options(EngineKind::Auto, false)).unwrap();
    let want = if cairn_engine_cuda::available() {
        "cuda"
    } else if common::ort_library().is_some() {
        "onnxruntime"
    } else {
        "tract"
    };
    assert_eq!(auto.info().backend, want);
    if common::ort_library().is_some() {
        let ort = engine::load(&path, &options(EngineKind::Ort, false)).unwrap();
        assert_eq!(ort.info().platform, "onnxruntime_onnx");
        assert_eq!(ort.info().device, cairn::engine::Device::Cpu);
        // The CPU wheel has no CUDA provider: asking for it is this model's load error, never a
        // silent CPU run; with fallback it runs on tract, and says so.
        for provider in [Provider::Cuda, Provider::Tensorrt] {
            let gpu = |fallback_to_cpu| LoadOptions {
                providers: vec![provider, Provider::Cpu],
                max_batch: 64,
                ..options(EngineKind::Ort, fallback_to_cpu)
            };
            let e = engine::load(&path, &gpu(false)).err().unwrap();
            assert!(e.to_string().contains("execution providers"), "{e}");
            assert_eq!(
                engine::load(&path, &gpu(true)).unwrap().info().backend,
                "tract"
            );
        }
    }
}
