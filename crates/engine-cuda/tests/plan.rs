//! The CUDA engine's graph compiler on the CPU: every shipped dense model compiles to the op list
//! expected (fusions included), its buffer plan never lets a step read a slot that something
//! else has overwritten, and the plan run on the host agrees with tract; models outside the
//! subset are refused naming the op; without a GPU the engine says what is missing.

use std::path::PathBuf;

use cairn_core::engine::{BatchInput, Engine, EngineError, LoadOptions};
use cairn_core::tensor::Tensor;
use cairn_engine_cuda::plan::{HostValue, Place, Plan, PlanError};
use cairn_engine_tract::TractEngine;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(rel: &str) -> PathBuf {
    root().join(rel)
}

/// Deterministic inputs in [-3, 3).
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect()
}

/// Replays the steps over the slots: each read must find its buffer still in its slot.
fn check_buffer_plan(plan: &Plan) {
    let m = &plan.memory;
    let mut holds: Vec<Option<usize>> = vec![None; m.slot_row_bytes.len()];
    for i in &plan.inputs {
        holds[m.slot_of[i.buffer].unwrap()] = Some(i.buffer);
    }
    for (n, step) in plan.steps.iter().enumerate() {
        for r in step.reads() {
            if plan.buffers[r].place == Place::Device {
                let slot = m.slot_of[r].unwrap();
                assert_eq!(
                    holds[slot],
                    Some(r),
                    "step {n} ({}) reads buffer {r} from slot {slot}, overwritten",
                    step.label()
                );
            }
        }
        let w = step.writes();
        if plan.buffers[w].place == Place::Device {
            let slot = m.slot_of[w].unwrap();
            assert!(
                !step.reads().iter().any(|&r| m.slot_of[r] == Some(slot)),
                "step {n} writes the slot it reads"
            );
            let row = plan.buffers[w].width * plan.buffers[w].elem.bytes();
            assert!(
                m.slot_row_bytes[slot] >= row,
                "slot {slot} too small for buffer {w}"
            );
            holds[slot] = Some(w);
        }
    }
    for &b in &m.copied_back {
        assert_eq!(
            holds[m.slot_of[b].unwrap()],
            Some(b),
            "buffer {b} overwritten before its copy back"
        );
    }
}

fn tract_outputs(path: &std::path::Path, data: &[f32], rows: usize, width: usize) -> Vec<Tensor> {
    let options = LoadOptions {
        batch_dim: true,
        ..Default::default()
    };
    let engine = TractEngine::load(path, &options).unwrap();
    let mut session = engine.new_session().unwrap();
    let input = Tensor::from_values(vec![rows, width], data).unwrap();
    session
        .set_inputs(&[BatchInput {
            shape: vec![rows, width],
            parts: vec![&input],
        }])
        .unwrap();
    session.run().unwrap()
}

fn agree(rel: &str, expected_ops: &[&str]) {
    let path = model(rel);
    let plan = Plan::compile_path(&path, &[]).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(plan.op_list(), expected_ops, "{rel}");
    check_buffer_plan(&plan);
    let width = plan.buffers[plan.inputs[0].buffer].width;
    let signature = cairn_engine_cuda::signature(&plan);
    for (seed, rows) in [(1, 1), (2, 7), (3, 64), (4, 300)] {
        let data = inputs(rows * width, seed);
        let ours = plan.run_host(&[&data], rows).unwrap();
        let ours = cairn_engine_cuda::outputs(&plan, ours, rows).unwrap();
        let theirs = tract_outputs(&path, &data, rows, width);
        assert_eq!(ours.len(), theirs.len());
        for ((o, t), spec) in ours.iter().zip(&theirs).zip(&signature.outputs) {
            assert_eq!(o.shape, t.shape, "{rel} {}: shape", spec.name);
            assert_eq!(o.dtype, t.dtype, "{rel} {}: dtype", spec.name);
            match (o.to_values::<f32>(), t.to_values::<f32>()) {
                (Some(a), Some(b)) => {
                    for (x, y) in a.iter().zip(&b) {
                        assert!(
                            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                            "{rel} {}: {x} vs {y}",
                            spec.name
                        );
                    }
                }
                _ => assert_eq!(
                    o.to_values::<i64>(),
                    t.to_values::<i64>(),
                    "{rel} {}",
                    spec.name
                ),
            }
        }
    }
}

#[test]
fn iris_mlp_compiles_to_two_fused_gemms_and_agrees_with_tract() {
    agree(
        "models/iris/2/model.onnx",
        &[
            "gemm[4x16]+bias+relu",
            "gemm[16x3]+bias",
            "softmax",
            "argmax",
            "gather",
        ],
    );
}

#[test]
fn tabular_small_keeps_the_sigmoid_fused_and_the_complement_on_the_device() {
    agree(
        "models/tabular-small/1/model.onnx",
        &[
            "gemm[32x64]+bias+relu",
            "gemm[64x1]+bias+sigmoid",
            "affine",
            "concat[2]",
            "argmax",
            "gather",
        ],
    );
}

#[test]
fn mlp_large_compiles_and_agrees_with_tract() {
    let plan = Plan::compile_path(&model("models/mlp-large/1/model.onnx"), &[]).unwrap();
    let gemms: Vec<String> = plan
        .op_list()
        .into_iter()
        .filter(|o| o.starts_with("gemm"))
        .collect();
    assert!(gemms.iter().all(|g| g.contains("+bias")), "{gemms:?}");
    agree(
        "models/mlp-large/1/model.onnx",
        &plan
            .op_list()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    // Slots are reused: fewer than one per device buffer.
    let device = plan
        .buffers
        .iter()
        .filter(|b| b.place == Place::Device)
        .count();
    assert!(
        plan.memory.slot_row_bytes.len() < device,
        "{:?}",
        plan.memory
    );
}

#[test]
fn outputs_are_copied_back_and_the_tail_runs_on_the_host() {
    let plan = Plan::compile_path(&model("models/iris/2/model.onnx"), &[]).unwrap();
    let names: Vec<&str> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    assert!(plan.outputs[0].flat && !plan.outputs[1].flat);
    // probabilities and the argmax (read by the host's class lookup) come back; nothing else.
    assert_eq!(plan.memory.copied_back.len(), 2, "{:?}", plan.memory);
    let host: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.place() == Place::Host)
        .map(|s| s.label())
        .collect();
    assert_eq!(host, ["gather"]);
    assert_eq!(plan.weight_bytes(), 4 * (4 * 16 + 16 + 16 * 3 + 3));
    // The host finish from copied-back values gives what the whole host run gives.
    let data = inputs(4 * 5, 9);
    let all = plan.run_host(&[&data], 5).unwrap();
    let mut copied: Vec<Option<HostValue>> = vec![None; plan.buffers.len()];
    for &b in &plan.memory.copied_back {
        let o = plan.outputs.iter().position(|o| o.buffer == b);
        copied[b] = match o {
            Some(o) => Some(all[o].clone()),
            // The argmax: recomputed from the probabilities.
            None => match &all[1] {
                HostValue::F32(p) => Some(HostValue::I64(
                    p.chunks(3)
                        .map(|r| {
                            (0..3).fold(0, |best, j| if r[j] > r[best] { j } else { best }) as i64
                        })
                        .collect(),
                )),
                HostValue::I64(_) => unreachable!(),
            },
        };
    }
    assert_eq!(plan.finish_on_host(copied, 5).unwrap(), all);
}

#[test]
fn models_outside_the_subset_are_refused_naming_the_op() {
    for (rel, op) in [
        (
            "models/iris/1/model.onnx",
            "node 'LinearClassifier' (LinearClassifier)",
        ),
        (
            "tests/models/dtypes/1/model.onnx",
            "input 'f64': ONNX element type 11",
        ),
        (
            "tests/models/simple_fp32/1/model.onnx",
            "(Add): an elementwise op on two computed values",
        ),
    ] {
        match Plan::compile_path(&model(rel), &[]) {
            Err(PlanError::Unsupported(why)) => {
                assert!(why.contains(op), "{rel}: {why}")
            }
            other => panic!("{rel}: {other:?}"),
        }
    }
    assert!(matches!(
        Plan::compile_path(&model("tests/models/corrupt/1/model.onnx"), &[]),
        Err(PlanError::Read(_))
    ));
}

#[test]
fn without_a_gpu_the_engine_says_what_is_missing() {
    let options = LoadOptions {
        batch_dim: true,
        ..Default::default()
    };
    let path = model("models/iris/2/model.onnx");
    match cairn_engine_cuda::gpus() {
        Err(reason) => {
            let err = cairn_engine_cuda::CudaEngine::load(&path, &options)
                .err()
                .unwrap();
            assert!(matches!(err, EngineError::Load { .. }), "{err}");
            assert!(err.to_string().contains(reason.as_str()), "{err}");
            println!("without a GPU: {err}");
            assert!(!cairn_engine_cuda::available());
            // The model is still judged first: one outside the subset names its op.
            let err =
                cairn_engine_cuda::CudaEngine::load(&model("models/iris/1/model.onnx"), &options)
                    .err()
                    .unwrap();
            assert!(err.to_string().contains("LinearClassifier"), "{err}");
        }
        Ok(gpus) => {
            // On a GPU host the engine loads and reports the device.
            let engine = cairn_engine_cuda::CudaEngine::load(&path, &options).unwrap();
            assert_eq!(engine.info().backend, "cuda");
            assert!(!gpus.is_empty());
        }
    }
}

/// The kernel source through NVRTC, which needs no GPU: wherever NVRTC is found (CI installs
/// pip's nvidia-cuda-nvrtc wheel and names it in CAIRN_CUDA_LIBRARY_PATH, with
/// CAIRN_REQUIRE_NVRTC=1 so a missing one fails instead of skipping).
#[test]
fn the_kernels_compile_with_nvrtc() {
    match cairn_engine_cuda::device::compile_kernels() {
        Ok(ptx) => {
            let text = ptx.to_src();
            for name in cairn_engine_cuda::device::KERNEL_NAMES {
                assert!(
                    text.contains(&format!(".entry {name}(")),
                    "no entry point {name} in the PTX"
                );
            }
        }
        Err(e)
            if e.starts_with("not found") && std::env::var_os("CAIRN_REQUIRE_NVRTC").is_none() =>
        {
            eprintln!("skipped: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}
