//! `cairn selftest`: on a GPU host, the GPU engines against the CPU on the shipped models, as a
//! one-screen report; with `--bench`, rows/s and p50/p99 per engine at the batch sizes of the
//! GPU benchmark (copies included), and the plan's GEMMs alone.
//!
//! Checked per model: the CUDA engine in fp32 (within 1e-5 relative of tract) and tf32 (1e-2),
//! and onnxruntime's CUDA provider (1e-5) where the onnxruntime library has it. Labels must be
//! equal, except where the top two probabilities of a row are closer than the tolerance. Without
//! a GPU the report says what is missing and the exit code is 2 (nothing was checked).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{EngineKind, Precision, Provider};
use crate::engine::{self, BatchInput, Engine, LoadOptions};
use crate::tensor::{DataType, Tensor};

#[derive(clap::Args, Debug)]
pub struct SelftestArgs {
    /// Model files to check, each `PATH` (an `[N, F]` FP32 input). [default: the shipped dense
    /// models: iris/2, tabular-small/1, mlp-large/1 under --repository]
    #[arg(long = "model", value_name = "PATH")]
    pub models: Vec<PathBuf>,
    /// Where the shipped models are.
    #[arg(long, default_value = "models")]
    pub repository: PathBuf,
    /// GPU to use.
    #[arg(long, default_value_t = 0)]
    pub device: u32,
    /// Also time every engine at batch 1, 64, 1024 and 8192.
    #[arg(long)]
    pub bench: bool,
    /// Seconds per timed point with --bench.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

pub enum Outcome {
    Passed,
    Failed,
    NoGpu,
}

const BATCHES: [usize; 3] = [1, 64, 1024];
const BENCH_BATCHES: [usize; 4] = [1, 64, 1024, 8192];

/// The report, and whether everything checked held.
pub fn run(args: &SelftestArgs) -> (String, Outcome) {
    let mut out = String::new();
    let gpus = match cairn_engine_cuda::gpus() {
        Ok(gpus) => gpus.clone(),
        Err(reason) => {
            out.push_str(&format!("no GPU to test: {reason}\n"));
            return (out, Outcome::NoGpu);
        }
    };
    for g in &gpus {
        out.push_str(&format!(
            "GPU {}: {} ({:.1} GiB)\n",
            g.ordinal,
            g.name,
            g.memory_bytes as f64 / (1u64 << 30) as f64
        ));
    }
    let models = if args.models.is_empty() {
        ["iris/2", "tabular-small/1", "mlp-large/1"]
            .iter()
            .map(|m| args.repository.join(m).join("model.onnx"))
            .collect()
    } else {
        args.models.clone()
    };
    let mut failed = false;
    out.push_str(&format!(
        "{:<28} {:<18} {:>6} {:>12} {:>7}  result\n",
        "model", "engine", "batch", "max rel err", "labels"
    ));
    for path in &models {
        failed |= check_model(path, args, &mut out);
    }
    let outcome = if failed {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
    (out, outcome)
}

/// One model on every engine against tract's answers (and, with `--bench`, their speeds), its
/// lines appended to `out`; true when something that must hold did not.
fn check_model(path: &Path, args: &SelftestArgs, out: &mut String) -> bool {
    let mut failed = false;
    let name = short(path);
    let cpu = match load(
        path,
        EngineKind::Tract,
        Vec::new(),
        Precision::Fp32,
        args.device,
    ) {
        Ok(e) => e,
        Err(e) => {
            out.push_str(&format!("{name:<28} cannot load on the CPU: {e}\n"));
            return true;
        }
    };
    let width = match cpu.signature().inputs.first().and_then(|i| i.dims.get(1)) {
        Some(&w) if w > 0 => w as usize,
        _ => {
            out.push_str(&format!("{name:<28} not an [N, F] model\n"));
            return true;
        }
    };
    let gpu_engines: [(&str, EngineKind, Vec<Provider>, Precision, f64); 3] = [
        (
            "cuda fp32",
            EngineKind::Cuda,
            Vec::new(),
            Precision::Fp32,
            1e-5,
        ),
        (
            "cuda tf32",
            EngineKind::Cuda,
            Vec::new(),
            Precision::Tf32,
            1e-2,
        ),
        (
            "ort cuda provider",
            EngineKind::Ort,
            vec![Provider::Cuda],
            Precision::Fp32,
            1e-5,
        ),
    ];
    let mut benched: Vec<(String, Arc<dyn Engine>)> = vec![("tract (cpu)".into(), cpu.clone())];
    if let Ok(ort) = load(
        path,
        EngineKind::Ort,
        Vec::new(),
        Precision::Fp32,
        args.device,
    ) {
        benched.push(("ort (cpu)".into(), ort));
    }
    for (label, kind, providers, precision, tol) in gpu_engines {
        let gpu = match load(path, kind, providers, precision, args.device) {
            Ok(e) => e,
            Err(e) => {
                // The CUDA engine must take the shipped models; ort's CUDA provider needs
                // onnxruntime-gpu, which a CUDA host often lacks: reported, not failed.
                let must = kind == EngineKind::Cuda && args.models.is_empty();
                failed |= must;
                let verdict = if must { "FAIL" } else { "skipped" };
                out.push_str(&format!("{name:<28} {label:<18} {verdict}: {e}\n"));
                continue;
            }
        };
        for rows in BATCHES {
            let input = inputs(rows, width, rows as u64);
            let (err, labels, ok) = match (infer(&cpu, &input), infer(&gpu, &input)) {
                (Ok(want), Ok(got)) => compare(&want, &got, tol),
                (Err(e), _) | (_, Err(e)) => {
                    out.push_str(&format!("{name:<28} {label:<18} {rows:>6} FAIL: {e}\n"));
                    failed = true;
                    continue;
                }
            };
            failed |= !ok;
            out.push_str(&format!(
                "{name:<28} {label:<18} {rows:>6} {err:>12.3e} {labels:>7}  {}\n",
                if ok { "ok" } else { "FAIL" }
            ));
        }
        benched.push((label.to_string(), gpu));
    }
    if args.bench {
        out.push_str(&bench(&name, path, width, &benched, args));
    }
    failed
}

fn load(
    path: &Path,
    kind: EngineKind,
    providers: Vec<Provider>,
    precision: Precision,
    device: u32,
) -> Result<Arc<dyn Engine>, String> {
    engine::load(
        path,
        &LoadOptions {
            kind,
            batch_dim: true,
            providers,
            precision,
            devices: vec![device],
            max_batch: 8192,
            ..LoadOptions::default()
        },
    )
    .map_err(|e| e.to_string())
}

fn short(path: &Path) -> String {
    let parts: Vec<_> = path.iter().rev().skip(1).take(2).collect();
    parts
        .iter()
        .rev()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Deterministic rows in [-3, 3).
fn inputs(rows: usize, width: usize, seed: u64) -> Tensor {
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let values: Vec<f32> = (0..rows * width)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect();
    Tensor::from_values(vec![rows, width], &values).expect("a well-formed tensor")
}

fn infer(engine: &Arc<dyn Engine>, input: &Tensor) -> Result<Vec<Tensor>, String> {
    let mut session = engine.new_session().map_err(|e| e.to_string())?;
    session
        .set_inputs(&[BatchInput {
            shape: input.shape.clone(),
            parts: vec![input],
        }])
        .map_err(|e| e.to_string())?;
    session.run().map_err(|e| e.to_string())
}

/// Largest relative error over the float outputs, label mismatches (rows whose top two
/// probabilities are within `tol` excepted), and whether both are within bounds.
fn compare(want: &[Tensor], got: &[Tensor], tol: f64) -> (f64, usize, bool) {
    let mut max_err = 0f64;
    let mut mismatched = 0;
    let mut ok = want.len() == got.len();
    let probabilities = want.iter().find_map(|t| {
        (t.dtype == DataType::Fp32 && t.shape.len() == 2)
            .then(|| (t.shape[1], t.to_values::<f32>()))
    });
    for (w, g) in want.iter().zip(got) {
        if w.shape != g.shape || w.dtype != g.dtype {
            ok = false;
            continue;
        }
        if let (Some(a), Some(b)) = (w.to_values::<f32>(), g.to_values::<f32>()) {
            for (x, y) in a.iter().zip(&b) {
                let e = ((*x as f64) - (*y as f64)).abs() / (1.0 + (*x as f64).abs());
                max_err = max_err.max(e);
            }
        } else if let (Some(a), Some(b)) = (w.to_values::<i64>(), g.to_values::<i64>()) {
            for (row, (x, y)) in a.iter().zip(&b).enumerate() {
                if x == y {
                    continue;
                }
                let close = match &probabilities {
                    Some((width, Some(p))) => {
                        let mut r: Vec<f32> = p[row * width..(row + 1) * width].to_vec();
                        r.sort_by(|a, b| b.total_cmp(a));
                        r.len() > 1 && ((r[0] - r[1]) as f64) < tol
                    }
                    _ => false,
                };
                if !close {
                    mismatched += 1;
                }
            }
        }
    }
    (max_err, mismatched, ok && max_err <= tol && mismatched == 0)
}

fn bench(
    name: &str,
    path: &Path,
    width: usize,
    engines: &[(String, Arc<dyn Engine>)],
    args: &SelftestArgs,
) -> String {
    let mut out = format!(
        "\n{name}: one session, copies included\n{:<18} {:>6} {:>14} {:>10} {:>10}\n",
        "engine", "batch", "rows/s", "p50", "p99"
    );
    for (label, engine) in engines {
        for rows in BENCH_BATCHES {
            let input = inputs(rows, width, 7);
            let mut session = match engine.new_session() {
                Ok(s) => s,
                Err(e) => {
                    out.push_str(&format!("{label:<18} {rows:>6} {e}\n"));
                    continue;
                }
            };
            let mut times = Vec::new();
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < args.seconds || times.len() < 3 {
                let t = Instant::now();
                let ran = session
                    .set_inputs(&[BatchInput {
                        shape: input.shape.clone(),
                        parts: vec![&input],
                    }])
                    .and_then(|_| session.run());
                if let Err(e) = ran {
                    out.push_str(&format!("{label:<18} {rows:>6} {e}\n"));
                    break;
                }
                times.push(t.elapsed().as_secs_f64());
            }
            if times.is_empty() {
                continue;
            }
            let total: f64 = times.iter().sum();
            times.sort_by(f64::total_cmp);
            let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize] * 1e6;
            out.push_str(&format!(
                "{label:<18} {rows:>6} {:>14.0} {:>8.0}µs {:>8.0}µs\n",
                (rows * times.len()) as f64 / total,
                q(0.5),
                q(0.99)
            ));
        }
    }
    // The plan's GEMMs alone, at the largest batch: what the floor is read against.
    let options = LoadOptions {
        kind: EngineKind::Cuda,
        batch_dim: true,
        devices: vec![args.device],
        ..LoadOptions::default()
    };
    let gemm_only = cairn_engine_cuda::CudaEngine::load(path, &options).ok();
    if let Some(cuda) = gemm_only {
        let rows = 8192;
        match cuda.gemm_seconds(rows, 50) {
            Ok(s) => {
                let flops = cuda.gemm_flops_per_row() as f64 * rows as f64;
                out.push_str(&format!(
                    "cuBLAS SGEMM alone {rows:>6} {:>14.0} {:>8.0}µs  ({:.2} TFLOP/s)\n",
                    rows as f64 / s,
                    s * 1e6,
                    flops / s / 1e12
                ));
            }
            Err(e) => out.push_str(&format!("cuBLAS SGEMM alone: {e}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: &[f32]) -> Tensor {
        Tensor::from_values(shape, v).unwrap()
    }

    #[test]
    fn errors_are_relative_and_near_ties_excuse_a_label() {
        let probs = t(vec![2, 2], &[0.9, 0.1, 0.5, 0.5]);
        let labels = Tensor::from_values(vec![2], &[0i64, 0]).unwrap();
        let want = vec![labels.clone(), probs.clone()];
        // Row 1 is a tie: its label may differ; row 0's may not.
        let tie = Tensor::from_values(vec![2], &[0i64, 1]).unwrap();
        let got = vec![tie, t(vec![2, 2], &[0.9, 0.1, 0.5, 0.5])];
        assert_eq!(compare(&want, &got, 1e-5), (0.0, 0, true));
        let wrong = Tensor::from_values(vec![2], &[1i64, 0]).unwrap();
        let got = vec![wrong, probs.clone()];
        assert!(!compare(&want, &got, 1e-5).2);
        // 1e-4 off on 0.9 is 1e-4 / 1.9 relative: within tf32's 1e-2, not fp32's 1e-5.
        let off = vec![labels, t(vec![2, 2], &[0.9001, 0.1, 0.5, 0.5])];
        let (err, _, fp32) = compare(&want, &off, 1e-5);
        assert!(!fp32 && (err - 1e-4 / 1.9).abs() < 1e-6, "{err}");
        assert!(compare(&want, &off, 1e-2).2);
    }

    #[test]
    fn the_report_names_models_by_their_last_two_directories() {
        assert_eq!(short(Path::new("models/iris/2/model.onnx")), "iris/2");
    }
}
