//! cairn's native CUDA engine: a dense ONNX graph ([`plan`]) compiled at load into cuBLAS GEMMs
//! with fused bias + activation epilogues and a few small kernels ([`device`]), the label tail
//! (class lookup) on the host.
//!
//! Built always (CUDA is opened at run time); where the driver, cuBLAS or NVRTC is missing the
//! load fails with what is missing, and the factory falls back to a CPU engine when the model
//! allows it. Not yet run on a GPU: the device path has been compiled and its plan checked
//! against tract on the CPU only (`cairn selftest` checks it on a GPU).

pub mod device;
pub mod libraries;
pub mod plan;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cairn_core::config::Precision;
use cairn_core::engine::{
    BatchInput, Device, DeviceWork, Engine, EngineError, EngineInfo, LoadOptions, Session,
    Signature, TensorSpec,
};
use cairn_core::tensor::{DataType, Tensor, TensorData};

use device::{DeviceModel, DeviceSession, GpuInfo};
use plan::{Elem, HostValue, Plan};

/// The GPUs of this host, looked for once per process.
pub fn gpus() -> &'static Result<Vec<GpuInfo>, String> {
    static GPUS: OnceLock<Result<Vec<GpuInfo>, String>> = OnceLock::new();
    GPUS.get_or_init(device::discover)
}

/// Whether a GPU is there to use.
pub fn available() -> bool {
    gpus().is_ok()
}

/// Whether the model is in the CUDA engine's subset (for `auto`).
pub fn takes(path: &Path, options: &LoadOptions) -> Result<(), String> {
    Plan::compile_path(path, &options.input_dims)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub struct CudaEngine {
    plan: Arc<Plan>,
    /// The version on each of its GPUs (`devices`, default GPU 0).
    models: Vec<Arc<DeviceModel>>,
    /// Sessions go to the GPUs in turn, so `instances` per GPU run on each.
    next: AtomicUsize,
    signature: Signature,
    /// Each new session captures the graphs of the buckets up to this many rows before it
    /// serves (the model's `max_batch_size`; 64 without batching); larger buckets are captured
    /// on first use.
    capture_rows: usize,
}

impl CudaEngine {
    pub fn load(path: &Path, options: &LoadOptions) -> Result<CudaEngine, EngineError> {
        let load_err = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        let plan = Arc::new(
            Plan::compile_path(path, &options.input_dims).map_err(|e| load_err(e.to_string()))?,
        );
        let mut devices = options.devices.clone();
        if devices.is_empty() {
            devices.push(0);
        }
        let mut seen = std::collections::BTreeSet::new();
        devices.retain(|d| seen.insert(*d));
        let tf32 = match options.precision {
            Precision::Fp32 => false,
            Precision::Tf32 => true,
            Precision::Fp16 => {
                return Err(EngineError::Unsupported(
                    "precision fp16 on the CUDA engine (fp32 or tf32)".into(),
                ))
            }
        };
        if let Err(reason) = gpus() {
            return Err(load_err(format!("no GPU for the CUDA engine: {reason}")));
        }
        let mut models = Vec::with_capacity(devices.len());
        for ordinal in devices {
            let model = DeviceModel::load(&plan, ordinal, tf32)
                .map_err(|e| load_err(format!("the CUDA engine on GPU {ordinal}: {e}")))?;
            models.push(Arc::new(model));
        }
        let engine = CudaEngine {
            signature: signature(&plan),
            plan,
            models,
            next: AtomicUsize::new(0),
            capture_rows: if options.max_batch > 0 {
                options.max_batch.min(device::GRAPH_MAX_ROWS)
            } else {
                64
            },
        };
        for model in &engine.models {
            engine
                .warm_up(model)
                .map_err(|e| load_err(format!("warm-up on GPU {}: {e}", model.gpu.ordinal)))?;
        }
        Ok(engine)
    }

    /// Off the request path, before the version serves: the first kernels and copies, the
    /// graphs of the buckets, and a check that a graph computes what the steps launched one by
    /// one compute (else graphs are turned off for this version, with a log line).
    fn warm_up(&self, model: &Arc<DeviceModel>) -> Result<(), String> {
        let mut session = self.session_on(model)?;
        let rows = 3;
        for i in 0..self.plan.inputs.len() {
            for (j, v) in session.stage(i, rows)?.iter_mut().enumerate() {
                *v = ((j * 7 + i * 3) % 11) as f32 / 11.0 - 0.5;
            }
        }
        let stepped = session.run_without_graphs()?;
        if model.graphs() {
            let graphed = session.run()?;
            if let Some(why) = disagreement(&stepped, &graphed) {
                model.stop_graphs(&why);
            }
        }
        Ok(())
    }

    /// A session on the next GPU in turn.
    fn session(&self) -> Result<DeviceSession, String> {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.models.len();
        self.session_on(&self.models[at])
    }

    fn session_on(&self, model: &Arc<DeviceModel>) -> Result<DeviceSession, String> {
        let mut session = DeviceSession::new(Arc::clone(model), Arc::clone(&self.plan))?;
        if model.graphs() {
            if let Err(e) = session.capture_up_to(self.capture_rows) {
                model.stop_graphs(&e);
            }
        }
        Ok(session)
    }

    /// Whether this version's batches run as captured CUDA graphs (on every GPU).
    pub fn uses_graphs(&self) -> bool {
        self.models.iter().all(|m| m.graphs())
    }

    /// The first GPU this version runs on.
    pub fn gpu(&self) -> &GpuInfo {
        &self.models[0].gpu
    }

    /// Seconds per batch of `rows` rows for the plan's GEMMs alone (cuBLAS only).
    pub fn gemm_seconds(&self, rows: usize, iterations: usize) -> Result<f64, String> {
        self.session()?.time_gemms(rows, iterations)
    }

    /// Floating-point operations of one batch row through the plan's GEMMs.
    pub fn gemm_flops_per_row(&self) -> u64 {
        self.plan
            .steps
            .iter()
            .map(|s| match s {
                plan::Step::Gemm { k, m, .. } => 2 * (*k as u64) * (*m as u64),
                _ => 0,
            })
            .sum()
    }
}

/// Where a graph's outputs part from the step-by-step ones (beyond 1e-5 relative), if they do.
fn disagreement(a: &[HostValue], b: &[HostValue]) -> Option<String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same = match (x, y) {
            (HostValue::F32(x), HostValue::F32(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|(p, q)| (p - q).abs() <= 1e-5 * p.abs().max(q.abs()).max(1.0))
            }
            (HostValue::I64(x), HostValue::I64(y)) => x == y,
            _ => false,
        };
        if !same {
            return Some(format!(
                "output {i} of a captured graph differs from the steps launched one by one"
            ));
        }
    }
    None
}

/// Inputs `[-1, width]` FP32; outputs FP32 or INT64, `[-1]` when flat.
pub fn signature(plan: &Plan) -> Signature {
    Signature {
        inputs: plan
            .inputs
            .iter()
            .map(|i| {
                TensorSpec::new(
                    i.name.clone(),
                    DataType::Fp32,
                    vec![-1, plan.buffers[i.buffer].width as i64],
                )
            })
            .collect(),
        outputs: plan
            .outputs
            .iter()
            .map(|o| {
                let b = &plan.buffers[o.buffer];
                let dtype = match b.elem {
                    Elem::F32 => DataType::Fp32,
                    Elem::I64 => DataType::Int64,
                };
                let dims = if o.flat {
                    vec![-1]
                } else {
                    vec![-1, b.width as i64]
                };
                TensorSpec::new(o.name.clone(), dtype, dims)
            })
            .collect(),
    }
}

impl Engine for CudaEngine {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            platform: "cuda_onnx",
            backend: "cuda",
            device: Device::Gpu(self.models.iter().map(|m| m.gpu.ordinal).collect()),
            threads: 1,
        }
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        Ok(Box::new(CudaSession {
            device: self.session().map_err(EngineError::Run)?,
            plan: Arc::clone(&self.plan),
            rows: 0,
        }))
    }
}

struct CudaSession {
    device: DeviceSession,
    plan: Arc<Plan>,
    rows: usize,
}

impl Session for CudaSession {
    fn set_inputs(&mut self, inputs: &[BatchInput<'_>]) -> Result<(), EngineError> {
        if inputs.len() != self.plan.inputs.len() {
            return Err(EngineError::Run(format!(
                "the model has {} inputs, {} were given",
                self.plan.inputs.len(),
                inputs.len()
            )));
        }
        let rows = inputs
            .first()
            .and_then(|i| i.shape.first())
            .copied()
            .unwrap_or(0);
        for (i, input) in inputs.iter().enumerate() {
            let width = self.plan.buffers[self.plan.inputs[i].buffer].width;
            if input.shape != [rows, width] {
                return Err(EngineError::Run(format!(
                    "input '{}' has shape {:?}; the CUDA engine takes [{rows}, {width}]",
                    self.plan.inputs[i].name, input.shape
                )));
            }
            let staged = self.device.stage(i, rows).map_err(EngineError::Run)?;
            gather(input, staged)?;
        }
        self.rows = rows;
        Ok(())
    }

    fn run(&mut self) -> Result<Vec<Tensor>, EngineError> {
        let values = self.device.run().map_err(EngineError::Run)?;
        outputs(&self.plan, values, self.rows)
    }

    fn device_work(&self) -> Option<DeviceWork> {
        Some(self.device.last_work())
    }
}

/// The batch's parts, straight into the staging buffer (FP32, little-endian).
fn gather(input: &BatchInput<'_>, staged: &mut [f32]) -> Result<(), EngineError> {
    let mut at = 0;
    for part in &input.parts {
        let TensorData::Fixed(bytes) = &part.data else {
            return Err(EngineError::Run("a BYTES part for an FP32 input".into()));
        };
        if part.dtype != DataType::Fp32 {
            return Err(EngineError::Run(format!(
                "a {} part for an FP32 input",
                part.dtype
            )));
        }
        let n = bytes.len() / 4;
        let dst = staged
            .get_mut(at..at + n)
            .ok_or_else(|| EngineError::Run("parts hold more values than the batch".into()))?;
        copy_le_f32(&bytes[..n * 4], dst);
        at += n;
    }
    if at != staged.len() {
        return Err(EngineError::Run(format!(
            "parts hold {at} values, the batch needs {}",
            staged.len()
        )));
    }
    Ok(())
}

/// Little-endian FP32 bytes into `dst`: one memcpy on a little-endian host (every CUDA host).
fn copy_le_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 4);
    if cfg!(target_endian = "little") {
        // SAFETY: `dst` is `src.len()` bytes of plain f32s, any bit pattern of which is valid,
        // and the two cannot overlap (one is borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len())
        }
    } else {
        for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
}

/// Host values as the signature's tensors.
pub fn outputs(
    plan: &Plan,
    values: Vec<HostValue>,
    rows: usize,
) -> Result<Vec<Tensor>, EngineError> {
    plan.outputs
        .iter()
        .zip(values)
        .map(|(o, v)| {
            let width = plan.buffers[o.buffer].width;
            let shape = if o.flat {
                vec![rows]
            } else {
                vec![rows, width]
            };
            let (dtype, bytes) = match v {
                HostValue::F32(v) => (
                    DataType::Fp32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                ),
                HostValue::I64(v) => (
                    DataType::Int64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                ),
            };
            Tensor::new(dtype, shape, TensorData::Fixed(Bytes::from(bytes)))
                .map_err(|e| EngineError::Run(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(values: &[f32]) -> Tensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(
            DataType::Fp32,
            vec![values.len() / 2, 2],
            TensorData::Fixed(Bytes::from(bytes)),
        )
        .unwrap()
    }

    #[test]
    fn gather_copies_the_parts_in_order_and_checks_their_count() {
        let (a, b) = (
            part(&[1.0, -2.5, 3.0, 4.0]),
            part(&[f32::MIN_POSITIVE, 6.0]),
        );
        let input = BatchInput {
            shape: vec![3, 2],
            parts: vec![&a, &b],
        };
        let mut staged = [0f32; 6];
        gather(&input, &mut staged).unwrap();
        assert_eq!(staged, [1.0, -2.5, 3.0, 4.0, f32::MIN_POSITIVE, 6.0]);
        let mut short = [0f32; 4];
        assert!(gather(&input, &mut short).is_err());
        let mut long = [0f32; 8];
        assert!(gather(&input, &mut long).is_err());
    }

    #[test]
    fn a_graph_that_differs_is_named() {
        let a = vec![HostValue::F32(vec![1.0, 2.0]), HostValue::I64(vec![1])];
        let close = vec![
            HostValue::F32(vec![1.0 + 1e-7, 2.0]),
            HostValue::I64(vec![1]),
        ];
        assert_eq!(disagreement(&a, &close), None);
        let far = vec![HostValue::F32(vec![1.0, 2.1]), HostValue::I64(vec![1])];
        assert!(disagreement(&a, &far).unwrap().contains("output 0"));
        let label = vec![HostValue::F32(vec![1.0, 2.0]), HostValue::I64(vec![0])];
        assert!(disagreement(&a, &label).unwrap().contains("output 1"));
    }
}
