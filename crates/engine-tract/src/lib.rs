//! The default CPU engine, on `tract-onnx`: pure Rust, nothing to download.
//!
//! The model is optimized once at load with symbolic dimensions (one shared symbol `N` for the
//! batch), so any batch size runs the same plan. tract computes single-threaded per call; a
//! version's parallelism comes from its `instances`, each holding its own `SimpleState`.

mod ml;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;
use tract_onnx::tract_hir::internal::{Factoid, GenericFactoid};

use cairn_core::engine::{
    BatchInput, Device, Engine, EngineError, EngineInfo, LoadOptions, Session, Signature,
    TensorSpec,
};
use cairn_core::tensor::{DataType, Tensor as HostTensor, TensorData};

/// tract's ONNX framework as this engine uses it: with our own ML operators (tree ensembles)
/// in place of tract's.
pub fn onnx() -> tract_onnx::Onnx {
    ml::onnx()
}

pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
    /// tract datum type of each input, in signature order.
    input_types: Vec<DatumType>,
}

impl TractEngine {
    pub fn load(path: &Path, options: &LoadOptions) -> Result<TractEngine, EngineError> {
        let load_err = |e: &dyn std::fmt::Display| EngineError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut model = onnx()
            .model_for_path(path)
            .map_err(|e| load_err(&format!("{e:#}")))?;
        let zipmaps = cairn_core::onnx_scan::zipmap_outputs(path)
            .map_err(|e| load_err(&format!("reading the model's ZipMap nodes: {e}")))?;

        let batch = model.sym("N");
        let input_count = model.input_outlets().map_err(|e| load_err(&e))?.len();
        let mut inputs = Vec::with_capacity(input_count);
        let mut input_types = Vec::with_capacity(input_count);
        for ix in 0..input_count {
            let outlet = model.input_outlets().map_err(|e| load_err(&e))?[ix];
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(ix).map_err(|e| load_err(&e))?.clone();
            let dt = fact
                .datum_type
                .concretize()
                .ok_or_else(|| load_err(&format!("input '{name}' has no declared element type")))?;
            let dtype = to_host_type(dt).ok_or_else(|| {
                EngineError::Unsupported(format!("input '{name}' of type {dt:?}"))
            })?;
            if fact.shape.is_open() {
                return Err(load_err(&format!("input '{name}' has no declared rank")));
            }
            let hint = options
                .input_dims
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| d.as_slice());
            let mut dims: TVec<TDim> = TVec::new();
            let mut spec_dims = Vec::new();
            for (j, d) in fact.shape.dims().enumerate() {
                let declared = match d {
                    GenericFactoid::Only(d) => Some(d.clone()),
                    GenericFactoid::Any => None,
                };
                let hinted = hint.and_then(|h| h.get(j)).copied().filter(|&v| v > 0);
                let dim = if j == 0 && options.batch_dim {
                    if let Some(v) = declared.as_ref().and_then(|d| d.as_i64()) {
                        return Err(load_err(&format!(
                            "input '{name}' has a fixed first dimension of {v}, but max_batch_size > 0 \
                             needs a variable batch dimension"
                        )));
                    }
                    TDim::Sym(batch.clone())
                } else {
                    match (declared, hinted) {
                        (Some(d), _) if d.as_i64().is_some() => d,
                        (_, Some(v)) => TDim::Val(v),
                        (Some(d), None) => d,
                        (None, None) => TDim::Sym(model.sym(&format!("{name}_d{j}"))),
                    }
                };
                spec_dims.push(dim.as_i64().unwrap_or(-1));
                dims.push(dim);
            }
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, dims))
                .map_err(|e| load_err(&e))?;
            inputs.push(TensorSpec::new(name, dtype, spec_dims));
            input_types.push(dt);
        }

        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(|e| load_err(&e))?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();

        let typed = model
            .into_optimized()
            .map_err(|e| load_err(&format!("{e:#}")))?;
        let mut outputs = Vec::with_capacity(output_names.len());
        for (ix, name) in output_names.into_iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(|e| load_err(&e))?;
            // tract computes some INT64 values (labels picked by ArgMax, shapes) as symbolic
            // dimensions; they come out as TDim and are cast back to INT64 after each run.
            let dtype = output_host_type(fact.datum_type).ok_or_else(|| {
                EngineError::Unsupported(format!("output '{name}' of type {:?}", fact.datum_type))
            })?;
            let dims: Vec<i64> = fact
                .shape
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            if options.batch_dim {
                let first = fact.shape.iter().next();
                if first != Some(&TDim::Sym(batch.clone())) {
                    return Err(load_err(&format!(
                        "output '{name}' does not have the batch dimension first (its shape is {:?}), \
                         so it cannot be split per request; set max_batch_size = 0",
                        fact.shape
                    )));
                }
            }
            let classes = zipmaps
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.clone());
            outputs.push(TensorSpec {
                name,
                dtype,
                dims,
                classes,
            });
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| load_err(&format!("{e:#}")))?;
        Ok(TractEngine {
            plan,
            signature: Signature { inputs, outputs },
            input_types,
        })
    }
}

impl Engine for TractEngine {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            platform: "tract_onnx",
            backend: "tract",
            device: Device::Cpu,
            threads: 1,
        }
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        let state = SimpleState::new(&self.plan).map_err(|e| EngineError::Run(format!("{e:#}")))?;
        Ok(Box::new(TractSession {
            state,
            input_types: self.input_types.clone(),
            pending: TVec::new(),
        }))
    }
}

struct TractSession {
    state: TypedSimpleState,
    input_types: Vec<DatumType>,
    /// Inputs set for the next `run`.
    pending: TVec<TValue>,
}

impl Session for TractSession {
    fn set_inputs(&mut self, inputs: &[BatchInput<'_>]) -> Result<(), EngineError> {
        if inputs.len() != self.input_types.len() {
            return Err(EngineError::Run(format!(
                "the model has {} inputs, {} were given",
                self.input_types.len(),
                inputs.len()
            )));
        }
        self.pending.clear();
        for (input, &dt) in inputs.iter().zip(&self.input_types) {
            self.pending.push(to_tract_tensor(input, dt)?.into_tvalue());
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Vec<HostTensor>, EngineError> {
        let values = std::mem::take(&mut self.pending);
        let outputs = self
            .state
            .run(values)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        outputs
            .into_iter()
            .map(|v| from_tract_tensor(v.into_tensor()))
            .collect()
    }
}

/// Copies the parts into one freshly allocated tract tensor: the only copy of a batch's input.
fn to_tract_tensor(input: &BatchInput<'_>, dt: DatumType) -> Result<Tensor, EngineError> {
    if dt == DatumType::String {
        let mut strings = Vec::with_capacity(input.shape.iter().product());
        for part in &input.parts {
            let TensorData::Bytes(items) = &part.data else {
                return Err(EngineError::Run("BYTES input holds fixed-size data".into()));
            };
            for item in items {
                let s = std::str::from_utf8(item).map_err(|_| {
                    EngineError::Run(
                        "a BYTES element is not UTF-8, which this model's string input needs"
                            .into(),
                    )
                })?;
                strings.push(s.to_string());
            }
        }
        return tract_ndarray::ArrayD::from_shape_vec(input.shape.as_slice(), strings)
            .map(|a| a.into_tensor())
            .map_err(|e| EngineError::Run(format!("BYTES input: {e}")));
    }
    // SAFETY: every byte of the tensor is written below before it is read; the total length is
    // checked first, so a short input cannot leave bytes uninitialized.
    let mut tensor = unsafe { Tensor::uninitialized_dt(dt, &input.shape) }
        .map_err(|e| EngineError::Run(format!("{e:#}")))?;
    let dst = tensor.as_bytes_mut();
    let total: usize = input
        .parts
        .iter()
        .map(|p| match &p.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(_) => usize::MAX,
        })
        .fold(0usize, |a, b| a.saturating_add(b));
    if total != dst.len() {
        return Err(EngineError::Run(format!(
            "batch input holds {total} bytes but its shape {:?} needs {}",
            input.shape,
            dst.len()
        )));
    }
    let mut offset = 0;
    for part in &input.parts {
        let TensorData::Fixed(src) = &part.data else {
            unreachable!("lengths were checked above")
        };
        let chunk = &mut dst[offset..offset + src.len()];
        if dt == DatumType::Bool {
            // A Rust bool must be 0 or 1; binary requests may carry any byte.
            for (d, s) in chunk.iter_mut().zip(src.iter()) {
                *d = (*s != 0) as u8;
            }
        } else {
            chunk.copy_from_slice(src);
        }
        offset += src.len();
    }
    Ok(tensor)
}

/// Wraps an output without copying: the host tensor's bytes point into tract's buffer.
fn from_tract_tensor(mut tensor: Tensor) -> Result<HostTensor, EngineError> {
    if tensor.datum_type() == DatumType::TDim {
        tensor = tensor
            .cast_to::<i64>()
            .map_err(|e| EngineError::Run(format!("cannot cast a TDim output to INT64: {e:#}")))?
            .into_owned();
    }
    let dt = tensor.datum_type();
    let dtype = to_host_type(dt)
        .ok_or_else(|| EngineError::Unsupported(format!("an output of type {dt:?}")))?;
    let shape = tensor.shape().to_vec();
    let data = if dt == DatumType::String {
        let view = tensor
            .to_plain_array_view::<String>()
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        TensorData::Bytes(
            view.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    } else {
        if tensor.as_plain_ram().is_none() {
            return Err(EngineError::Run(
                "output tensor is not in host memory".into(),
            ));
        }
        TensorData::Fixed(Bytes::from_owner(TractBytes(tensor)))
    };
    HostTensor::new(dtype, shape, data).map_err(|e| EngineError::Run(e.to_string()))
}

struct TractBytes(Tensor);

impl AsRef<[u8]> for TractBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn output_host_type(dt: DatumType) -> Option<DataType> {
    if dt == DatumType::TDim {
        return Some(DataType::Int64);
    }
    to_host_type(dt)
}

fn to_host_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}
