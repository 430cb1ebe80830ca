//! cairn's native CUDA engine: a dense ONNX graph ([`plan`]) compiled at load into cuBLAS GEMMs
//! with fused bias + activation epilogues and a few small kernels ([`device`]), the label tail
//! (class lookup) on the host.
//!
//! Built always (CUDA is opened at run time); where the driver, cuBLAS or NVRTC is missing the
//! load fails with what is missing, and the factory falls back to a CPU engine when the model
//! allows it. Not yet run on a GPU: the device path has been compiled and its plan checked
//! against tract on the CPU only (`cairn selftest` checks it on a GPU).

pub mod device;
pub mod plan;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cairn_core::config::Precision;
use cairn_core::engine::{
    BatchInput, Device, Engine, EngineError, EngineInfo, LoadOptions, Session, Signature,
    TensorSpec,
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
    model: Arc<DeviceModel>,
    signature: Signature,
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
        let ordinal = options.devices.first().copied().unwrap_or(0);
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
        let model = DeviceModel::load(&plan, ordinal, tf32)
            .map_err(|e| load_err(format!("the CUDA engine on GPU {ordinal}: {e}")))?;
        let engine = CudaEngine {
            signature: signature(&plan),
            plan,
            model: Arc::new(model),
        };
        // Warm-up off the request path: the first kernels and copies, before the version serves.
        let mut session = engine.session().map_err(EngineError::Run)?;
        for i in 0..engine.plan.inputs.len() {
            session.stage(i, 1).map_err(EngineError::Run)?.fill(0.0);
        }
        session
            .run()
            .map_err(|e| load_err(format!("warm-up on the GPU: {e}")))?;
        Ok(engine)
    }

    fn session(&self) -> Result<DeviceSession, String> {
        DeviceSession::new(Arc::clone(&self.model), Arc::clone(&self.plan))
    }

    /// The GPU this version runs on.
    pub fn gpu(&self) -> &GpuInfo {
        &self.model.gpu
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

/// Inputs `[-1, width]` FP32; outputs FP32 or INT64, `[-1]` when flat.
pub fn signature(plan: &Plan) -> Signature {
    Signature {
        inputs: plan
            .inputs
            .iter()
            .map(|i| TensorSpec {
                name: i.name.clone(),
                dtype: DataType::Fp32,
                dims: vec![-1, plan.buffers[i.buffer].width as i64],
            })
            .collect(),
        outputs: plan
            .outputs
            .iter()
            .map(|o| {
                let b = &plan.buffers[o.buffer];
                TensorSpec {
                    name: o.name.clone(),
                    dtype: match b.elem {
                        Elem::F32 => DataType::Fp32,
                        Elem::I64 => DataType::Int64,
                    },
                    dims: if o.flat {
                        vec![-1]
                    } else {
                        vec![-1, b.width as i64]
                    },
                }
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
            device: Device::Gpu(vec![self.model.gpu.ordinal]),
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
        for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
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
