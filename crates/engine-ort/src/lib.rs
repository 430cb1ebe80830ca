//! The onnxruntime engine, through `ort` with the library loaded at run time.
//!
//! Where the library comes from: [`set_library`] (the server's `onnxruntime_library` setting; the
//! server hands the same path to its checked-load children through `ORT_DYLIB_PATH`), else
//! `ORT_DYLIB_PATH`, else `libonnxruntime.so.1` on the loader's search path. A missing or unloadable library
//! is a load error for the model that asked for this engine, with the path tried; it never
//! panics and never affects a model on another engine. The environment is created once per
//! process; each worker gets its own `ort::Session` (a run needs it exclusively).
//!
//! Execution providers (`[engine] providers = ["tensorrt", "cuda", "cpu"]`) are registered in
//! order with `error_on_failure`: a provider that cannot register is this model's load error.
//! What the engine reports (`Device::Gpu`) follows what was asked and registered.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use cairn_core::config::{Precision, Provider};
use cairn_core::engine::{
    BatchInput, ClassLabels, Device, Engine, EngineError, EngineInfo, LoadOptions, Session,
    Signature, TensorSpec,
};
use cairn_core::tensor::{DataType, Tensor as HostTensor, TensorData};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session as OrtSession;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

/// The library the process loaded and its environment (or why it could not), decided once.
static RUNTIME: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// The environment variable naming the library file.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

static LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// Names the library file, before the first model loads on this engine. Returns false when a
/// library was already named (the first one stays).
pub fn set_library(path: PathBuf) -> bool {
    LIBRARY.set(path).is_ok()
}

/// The library file this process uses.
pub fn library_path() -> PathBuf {
    LIBRARY
        .get()
        .cloned()
        .or_else(|| std::env::var_os(LIBRARY_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so.1"))
}

/// Loads the library and creates the environment, once. The error says which file was tried.
pub fn runtime() -> Result<&'static Path, String> {
    environment().map(|(path, _)| path.as_path())
}

fn environment() -> Result<&'static (PathBuf, ort::environment::Environment), String> {
    RUNTIME
        .get_or_init(|| {
            let path = library_path();
            // The file must exist when a path is given: dlopen's own message is less clear.
            if path.components().count() > 1 && !path.exists() {
                return Err(format!(
                    "onnxruntime library {} does not exist (set onnxruntime_library)",
                    path.display()
                ));
            }
            let builder = ort::init_from(&path).map_err(|e| {
                format!(
                    "cannot load the onnxruntime library {}: {e} (set onnxruntime_library; the \
                     onnxruntime wheel from PyPI ships one in onnxruntime/capi/)",
                    path.display()
                )
            })?;
            let env = builder
                .with_name("cairn")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start onnxruntime ({}): {e}", path.display()))?;
            Ok((path, env))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether this process can use the engine (for `auto`).
pub fn available() -> bool {
    runtime().is_ok()
}

/// A loaded model: its path and settings (each worker opens its own session from them) and
/// the signature read from the first session.
pub struct OrtEngine {
    path: PathBuf,
    settings: Settings,
    device: Device,
    signature: Signature,
    input_types: Vec<DataType>,
    /// The session made at load (its checks are the load's), handed to the first worker.
    first: std::sync::Mutex<Option<OrtSession>>,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Load {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// What a session is opened with.
#[derive(Clone)]
struct Settings {
    threads: usize,
    providers: Vec<Provider>,
    device: u32,
    precision: Precision,
    cache_dir: Option<PathBuf>,
    /// TensorRT optimisation profiles (min, opt, max), when every input's other dims are known.
    profiles: Option<(String, String, String)>,
}

/// The providers to register, in order, each failing the load when it cannot register (ort
/// falls back silently otherwise, and a model that asked for a GPU would run on the CPU unseen).
fn providers(s: &Settings) -> Vec<ort::ep::ExecutionProviderDispatch> {
    s.providers
        .iter()
        .map(|p| match p {
            Provider::Cuda => ort::ep::CUDA::default()
                .with_device_id(s.device as i32)
                .with_tf32(s.precision == Precision::Tf32)
                .build()
                .error_on_failure(),
            Provider::Tensorrt => {
                let mut t = ort::ep::TensorRT::default()
                    .with_device_id(s.device as i32)
                    .with_fp16(s.precision == Precision::Fp16);
                if let Some(dir) = &s.cache_dir {
                    t = t
                        .with_engine_cache(true)
                        .with_engine_cache_path(dir.display());
                }
                if let Some((min, opt, max)) = &s.profiles {
                    t = t
                        .with_profile_min_shapes(min)
                        .with_profile_opt_shapes(opt)
                        .with_profile_max_shapes(max);
                }
                t.build().error_on_failure()
            }
            Provider::Cpu => ort::ep::CPU::default().build().error_on_failure(),
        })
        .collect()
}

/// `name:1x32,...` at batch 1, `max_batch`/2 and `max_batch`, for inputs whose every dimension
/// but the first is known.
fn profiles(inputs: &[TensorSpec], max_batch: usize) -> Option<(String, String, String)> {
    if max_batch == 0 {
        return None;
    }
    let at = |n: usize| -> Option<String> {
        let parts: Option<Vec<String>> = inputs
            .iter()
            .map(|t| {
                let rest: Option<Vec<String>> = t.dims[1..]
                    .iter()
                    .map(|d| (*d > 0).then(|| d.to_string()))
                    .collect();
                rest.map(|r| {
                    format!(
                        "{}:{}",
                        t.name,
                        std::iter::once(n.to_string())
                            .chain(r)
                            .collect::<Vec<_>>()
                            .join("x")
                    )
                })
            })
            .collect();
        parts.map(|p| p.join(","))
    };
    Some((at(1)?, at(max_batch.div_ceil(2))?, at(max_batch)?))
}

fn open(path: &Path, s: &Settings) -> Result<OrtSession, EngineError> {
    let threads = s.threads;
    let (_, env) = environment().map_err(|e| load_err(path, e))?;
    let fail = |e: &dyn std::fmt::Display| load_err(path, e);
    let builder = OrtSession::builder(env).map_err(|e| fail(&e))?;
    let builder = if s.providers.is_empty() {
        builder
    } else {
        builder
            .with_execution_providers(providers(s))
            .map_err(|e| {
                let names: Vec<&str> = s.providers.iter().map(|p| p.as_str()).collect();
                fail(&format!(
                    "cannot register the execution providers [{}] (is the GPU build of \
                     onnxruntime, with its CUDA/TensorRT libraries, on this machine?): {e}",
                    names.join(", ")
                ))
            })?
    };
    let builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(&e))?;
    let builder = builder
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail(&e))?;
    let mut builder = builder.with_inter_threads(1).map_err(|e| fail(&e))?;
    builder.commit_from_file(path).map_err(|e| fail(&e))
}

impl OrtEngine {
    pub fn load(path: &Path, options: &LoadOptions) -> Result<OrtEngine, EngineError> {
        let mut settings = Settings {
            threads: options.threads.max(1),
            providers: options.providers.clone(),
            device: options.devices.first().copied().unwrap_or(0),
            precision: options.precision,
            cache_dir: options.cache_dir.clone(),
            profiles: None,
        };
        if options.providers.contains(&Provider::Tensorrt) {
            // The profiles need the inputs, which only a session says: a CPU session reads them.
            let probe = open(
                path,
                &Settings {
                    providers: Vec::new(),
                    ..settings.clone()
                },
            )?;
            let specs: Vec<TensorSpec> = probe
                .inputs()
                .iter()
                .filter_map(|o| {
                    spec_of(o.name(), o.dtype())
                        .ok()
                        .map(|(dtype, dims)| TensorSpec::new(o.name(), dtype, dims))
                })
                .collect();
            settings.profiles = profiles(&specs, options.max_batch);
        }
        let session = open(path, &settings)?;
        let mut inputs = Vec::new();
        let mut input_types = Vec::new();
        for outlet in session.inputs() {
            let (dtype, dims) = spec_of(outlet.name(), outlet.dtype())?;
            let mut dims = dims;
            if let Some((_, pinned)) = options.input_dims.iter().find(|(n, _)| n == outlet.name()) {
                for (d, p) in dims.iter_mut().zip(pinned) {
                    if *d < 0 && *p > 0 {
                        *d = *p;
                    }
                }
            }
            if options.batch_dim {
                match dims.first() {
                    Some(&d) if d > 0 => {
                        return Err(load_err(
                            path,
                            format!(
                                "input '{}' has a fixed first dimension of {d}, but \
                                 max_batch_size > 0 needs a variable batch dimension",
                                outlet.name()
                            ),
                        ))
                    }
                    None => {
                        return Err(load_err(
                            path,
                            format!(
                                "input '{}' is a scalar and has no batch dimension",
                                outlet.name()
                            ),
                        ))
                    }
                    _ => {}
                }
            }
            input_types.push(dtype);
            inputs.push(TensorSpec::new(outlet.name(), dtype, dims));
        }
        // A classifier's ZipMap output (a sequence of maps, one per row) is answered as the
        // [N, classes] tensor of its probabilities; its classes come from the file.
        let zipmaps = cairn_core::onnx_scan::zipmap_outputs(path)
            .map_err(|e| load_err(path, format!("reading the model's ZipMap nodes: {e}")))?;
        let mut outputs = Vec::new();
        for outlet in session.outputs() {
            let zipmap = zipmaps.iter().find(|(n, _)| n == outlet.name());
            if let (Some((_, classes)), ValueType::Sequence(inner)) = (zipmap, outlet.dtype()) {
                if let ValueType::Map {
                    value: TensorElementType::Float32,
                    ..
                } = **inner
                {
                    outputs.push(TensorSpec {
                        name: outlet.name().to_string(),
                        dtype: DataType::Fp32,
                        dims: vec![-1, classes.len() as i64],
                        classes: Some(classes.clone()),
                    });
                    continue;
                }
            }
            let (dtype, dims) = spec_of(outlet.name(), outlet.dtype())?;
            outputs.push(TensorSpec::new(outlet.name(), dtype, dims));
        }
        let gpu = settings
            .providers
            .iter()
            .any(|p| matches!(p, Provider::Cuda | Provider::Tensorrt));
        Ok(OrtEngine {
            path: path.to_path_buf(),
            device: if gpu {
                Device::Gpu(vec![settings.device])
            } else {
                Device::Cpu
            },
            settings,
            signature: Signature { inputs, outputs },
            input_types,
            first: std::sync::Mutex::new(Some(session)),
        })
    }
}

fn spec_of(name: &str, ty: &ValueType) -> Result<(DataType, Vec<i64>), EngineError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = host_type(*ty).ok_or_else(|| {
                EngineError::Unsupported(format!("tensor '{name}' of type {ty:?}"))
            })?;
            Ok((dtype, shape.iter().copied().collect()))
        }
        other => Err(EngineError::Unsupported(format!(
            "'{name}' is not a tensor ({other:?}); of sequences and maps, only a classifier's ZipMap output is served"
        ))),
    }
}

fn host_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

impl Engine for OrtEngine {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            platform: "onnxruntime_onnx",
            backend: "onnxruntime",
            device: self.device.clone(),
            threads: self.settings.threads,
        }
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        let session = match first {
            Some(s) => s,
            None => open(&self.path, &self.settings)?,
        };
        Ok(Box::new(OrtWorker {
            session,
            input_types: self.input_types.clone(),
            outputs: self
                .signature
                .outputs
                .iter()
                .map(|t| match &t.classes {
                    Some(classes) => Output::ZipMap(classes.clone()),
                    None => Output::Tensor(t.dtype),
                })
                .collect(),
            pending: Vec::new(),
        }))
    }
}

struct OrtWorker {
    session: OrtSession,
    input_types: Vec<DataType>,
    outputs: Vec<Output>,
    pending: Vec<DynValue>,
}

/// How an output is read back.
enum Output {
    Tensor(DataType),
    /// A sequence of maps from class to probability, read into `[N, classes]` in this order.
    ZipMap(ClassLabels),
}

fn run_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Run(e.to_string())
}

/// The byte buffers of a fixed-size input's parts, their lengths checked against the shape.
fn fixed_parts<'a>(input: &'a BatchInput<'_>, size: usize) -> Result<Vec<&'a [u8]>, EngineError> {
    let mut parts = Vec::with_capacity(input.parts.len());
    for part in &input.parts {
        match &part.data {
            TensorData::Fixed(b) => parts.push(b.as_ref()),
            TensorData::Bytes(_) => return Err(run_err("a fixed-size input holds BYTES data")),
        }
    }
    let given: usize = parts.iter().map(|p| p.len()).sum();
    let needed = input.shape.iter().product::<usize>() * size;
    if given != needed {
        return Err(run_err(format!(
            "batch input holds {given} bytes but its shape {:?} needs {needed}",
            input.shape
        )));
    }
    Ok(parts)
}

/// The parts' elements decoded straight into the tensor's own buffer: one copy per batch.
macro_rules! typed_value {
    ($parts:expr, $shape:expr, $t:ty) => {{
        let size = std::mem::size_of::<$t>();
        let mut values: Vec<$t> =
            Vec::with_capacity($parts.iter().map(|p| p.len()).sum::<usize>() / size);
        for part in $parts {
            values.extend(
                part.chunks_exact(size)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunks_exact"))),
            );
        }
        OrtTensor::from_array(($shape, values)).map(|t| t.into_dyn())
    }};
}

fn to_value(input: &BatchInput<'_>, dtype: DataType) -> Result<DynValue, EngineError> {
    let shape: Vec<i64> = input.shape.iter().map(|d| *d as i64).collect();
    let expected: usize = input.shape.iter().product();
    if dtype == DataType::Bytes {
        let mut strings = Vec::with_capacity(expected);
        for part in &input.parts {
            let TensorData::Bytes(items) = &part.data else {
                return Err(run_err("a BYTES input holds fixed-size data"));
            };
            for item in items {
                strings.push(
                    std::str::from_utf8(item)
                        .map_err(|_| run_err("a BYTES element is not UTF-8, which this model's string input needs"))?
                        .to_string(),
                );
            }
        }
        return OrtTensor::from_string_array((shape, strings.as_slice()))
            .map(|t| t.into_dyn())
            .map_err(run_err);
    }
    let parts = fixed_parts(input, dtype.size().unwrap_or(1))?;
    let value = match dtype {
        DataType::Bool => {
            // A Rust bool must be 0 or 1; binary requests may carry any byte.
            let values: Vec<bool> = parts
                .iter()
                .flat_map(|p| p.iter().map(|b| *b != 0))
                .collect();
            OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        DataType::Uint8 => OrtTensor::from_array((shape, parts.concat())).map(|t| t.into_dyn()),
        DataType::Int8 => typed_value!(&parts, shape, i8),
        DataType::Uint16 => typed_value!(&parts, shape, u16),
        DataType::Int16 => typed_value!(&parts, shape, i16),
        DataType::Uint32 => typed_value!(&parts, shape, u32),
        DataType::Int32 => typed_value!(&parts, shape, i32),
        DataType::Uint64 => typed_value!(&parts, shape, u64),
        DataType::Int64 => typed_value!(&parts, shape, i64),
        DataType::Fp16 => typed_value!(&parts, shape, half::f16),
        DataType::Bf16 => typed_value!(&parts, shape, half::bf16),
        DataType::Fp32 => typed_value!(&parts, shape, f32),
        DataType::Fp64 => typed_value!(&parts, shape, f64),
        other => {
            return Err(EngineError::Unsupported(format!(
                "an input of type {other}"
            )))
        }
    };
    value.map_err(run_err)
}

macro_rules! fixed_output {
    ($value:expr, $t:ty, $dtype:expr) => {{
        let (shape, data) = $value.try_extract_tensor::<$t>().map_err(run_err)?;
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(data));
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        (
            shape.iter().map(|d| *d as usize).collect::<Vec<_>>(),
            TensorData::Fixed(Bytes::from(bytes)),
        )
    }};
}

fn from_value(value: &DynValue, dtype: DataType) -> Result<HostTensor, EngineError> {
    let (shape, data) = match dtype {
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(run_err)?;
            (
                shape.iter().map(|d| *d as usize).collect(),
                TensorData::Bytes(strings.into_iter().map(Bytes::from).collect()),
            )
        }
        DataType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(run_err)?;
            (
                shape.iter().map(|d| *d as usize).collect(),
                TensorData::Fixed(Bytes::from(
                    data.iter().map(|b| *b as u8).collect::<Vec<u8>>(),
                )),
            )
        }
        DataType::Uint8 => fixed_output!(value, u8, dtype),
        DataType::Int8 => fixed_output!(value, i8, dtype),
        DataType::Uint16 => fixed_output!(value, u16, dtype),
        DataType::Int16 => fixed_output!(value, i16, dtype),
        DataType::Uint32 => fixed_output!(value, u32, dtype),
        DataType::Int32 => fixed_output!(value, i32, dtype),
        DataType::Uint64 => fixed_output!(value, u64, dtype),
        DataType::Int64 => fixed_output!(value, i64, dtype),
        DataType::Fp16 => fixed_output!(value, half::f16, dtype),
        DataType::Bf16 => fixed_output!(value, half::bf16, dtype),
        DataType::Fp32 => fixed_output!(value, f32, dtype),
        DataType::Fp64 => fixed_output!(value, f64, dtype),
    };
    HostTensor::new(dtype, shape, data).map_err(run_err)
}

/// One map per row, its values in the order of `classes` (a class missing from a row's map
/// is an error: onnxruntime's ZipMap writes every key).
fn from_zipmap(value: &DynValue, classes: &ClassLabels) -> Result<HostTensor, EngineError> {
    let rows = value
        .try_extract_sequence::<ort::value::DynValueTypeMarker>()
        .map_err(run_err)?;
    let width = classes.len();
    let mut bytes = Vec::with_capacity(rows.len() * width * 4);
    let missing = |k: &dyn std::fmt::Display| run_err(format!("ZipMap row without class {k}"));
    for row in &rows {
        match classes {
            ClassLabels::Int(keys) => {
                let kv = row.try_extract_key_values::<i64, f32>().map_err(run_err)?;
                for k in keys {
                    let v = kv
                        .iter()
                        .find(|(key, _)| key == k)
                        .ok_or_else(|| missing(k))?;
                    bytes.extend_from_slice(&v.1.to_le_bytes());
                }
            }
            ClassLabels::Str(keys) => {
                let kv = row
                    .try_extract_key_values::<String, f32>()
                    .map_err(run_err)?;
                for k in keys {
                    let v = kv
                        .iter()
                        .find(|(key, _)| key == k)
                        .ok_or_else(|| missing(k))?;
                    bytes.extend_from_slice(&v.1.to_le_bytes());
                }
            }
        }
    }
    HostTensor::new(
        DataType::Fp32,
        vec![rows.len(), width],
        TensorData::Fixed(Bytes::from(bytes)),
    )
    .map_err(run_err)
}

impl Session for OrtWorker {
    fn set_inputs(&mut self, inputs: &[BatchInput<'_>]) -> Result<(), EngineError> {
        if inputs.len() != self.input_types.len() {
            return Err(run_err(format!(
                "the model has {} inputs, {} were given",
                self.input_types.len(),
                inputs.len()
            )));
        }
        self.pending.clear();
        for (input, &dtype) in inputs.iter().zip(&self.input_types) {
            self.pending.push(to_value(input, dtype)?);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Vec<HostTensor>, EngineError> {
        // In the session's input order: no names to copy per batch.
        let values: Vec<ort::session::SessionInputValue<'_>> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(Into::into)
            .collect();
        let outputs = self.session.run(values.as_slice()).map_err(run_err)?;
        outputs
            .values()
            .zip(&self.outputs)
            .map(|(v, kind)| match kind {
                Output::Tensor(dtype) => from_value(&v, *dtype),
                Output::ZipMap(classes) => from_zipmap(&v, classes),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_profiles_span_the_batch_sizes() {
        let spec = |name: &str, dims: Vec<i64>| TensorSpec::new(name, DataType::Fp32, dims);
        let p = profiles(
            &[spec("input", vec![-1, 32]), spec("mask", vec![-1, 4, 2])],
            64,
        )
        .unwrap();
        assert_eq!(p.0, "input:1x32,mask:1x4x2");
        assert_eq!(p.1, "input:32x32,mask:32x4x2");
        assert_eq!(p.2, "input:64x32,mask:64x4x2");
        assert_eq!(profiles(&[spec("input", vec![-1, -1])], 64), None);
        assert_eq!(profiles(&[spec("input", vec![-1, 32])], 0), None);
    }
}
