//! Engines: what runs a model on a batch of host tensors.
//!
//! An [`Engine`] is the immutable, shared, loaded model (an optimized plan); a [`Session`] is one
//! worker's reusable run state. Sessions are driven only from `batching`'s worker threads, never
//! from a tokio worker. Nothing here knows HTTP, JSON or routing: engines see only
//! `crate::tensor` types, and their errors are plain strings wrapped in [`EngineError`].

pub use crate::config::EngineKind;
use crate::tensor::{DataType, Tensor};

/// The inputs and outputs a model file declares, in the model's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// One declared tensor. `dims` is the full shape, batch dimension included; -1 is variable.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    /// The class each column stands for, where the model says: a classifier's `ZipMap`
    /// output, which engines answer as its `[N, classes]` probabilities.
    pub classes: Option<ClassLabels>,
}

impl TensorSpec {
    /// A tensor without class labels.
    pub fn new(name: impl Into<String>, dtype: DataType, dims: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            dims,
            classes: None,
        }
    }
}

/// The keys of a `ZipMap`, in its column order: a classifier's class labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassLabels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl ClassLabels {
    pub fn len(&self) -> usize {
        match self {
            ClassLabels::Int(v) => v.len(),
            ClassLabels::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels as a JSON array (`[0,1,2]`, `["setosa","versicolor"]`): how metadata,
    /// configuration and responses carry them, as one string parameter a client parses.
    pub fn to_json(&self) -> String {
        match self {
            ClassLabels::Int(v) => serde_json::to_string(v),
            ClassLabels::Str(v) => serde_json::to_string(v),
        }
        .expect("a list of integers or strings serializes")
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The engine to build.
    pub kind: EngineKind,
    /// Threads one call may use.
    pub threads: usize,
    /// The first dimension of every input and output is the batch dimension, shared by all.
    pub batch_dim: bool,
    /// Shapes the configuration pins for inputs whose model dims are unknown or variable: name and
    /// full dims (-1 stays variable).
    pub input_dims: Vec<(String, Vec<i64>)>,
    /// Load with the CPU engine (tract) when `kind` cannot take the model.
    pub fallback_to_cpu: bool,
    /// onnxruntime's execution providers, in order; empty: the CPU.
    pub providers: Vec<crate::config::Provider>,
    /// GPU ids for a GPU provider.
    pub devices: Vec<u32>,
    pub precision: crate::config::Precision,
    /// TensorRT's engine cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The model's `max_batch_size` (TensorRT's optimisation profiles).
    pub max_batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            kind: EngineKind::default(),
            threads: 1,
            batch_dim: false,
            input_dims: Vec::new(),
            fallback_to_cpu: false,
            providers: Vec::new(),
            devices: Vec::new(),
            precision: crate::config::Precision::default(),
            cache_dir: None,
            max_batch: 0,
        }
    }
}

/// One input of a batch: the parts (one per request, in order) are concatenated along the first
/// dimension into one tensor of `shape`. Parts have the input's datatype, checked upstream.
pub struct BatchInput<'a> {
    pub shape: Vec<usize>,
    pub parts: Vec<&'a Tensor>,
}

/// What an engine says about itself: metadata and `/config` report this, never a constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Triton's `platform`: `tract_onnx`, after `onnxruntime_onnx`.
    pub platform: &'static str,
    /// Triton's `backend`: `tract`.
    pub backend: &'static str,
    /// Where it computes.
    pub device: Device,
    /// Threads one call uses.
    pub threads: usize,
}

/// Where an engine computes: Triton's `instance_group.kind`, with the GPU ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu(Vec<u32>),
}

impl Device {
    /// Triton's `instance_group.kind`.
    pub fn triton_kind(&self) -> &'static str {
        match self {
            Device::Cpu => "KIND_CPU",
            Device::Gpu(_) => "KIND_GPU",
        }
    }
}

/// A loaded model, shared by every worker of a version.
pub trait Engine: Send + Sync + 'static {
    fn signature(&self) -> &Signature;
    fn info(&self) -> EngineInfo;
    /// Per-worker run state; cheap next to loading.
    fn new_session(&self) -> Result<Box<dyn Session>, EngineError>;
}

/// A worker's run state. Both calls block the calling thread; they are separate so that the time
/// spent gathering inputs and the time spent computing can be told apart.
pub trait Session: Send {
    /// Copies one batch's inputs (in signature order) into the engine's own buffers.
    fn set_inputs(&mut self, inputs: &[BatchInput<'_>]) -> Result<(), EngineError>;
    /// Computes the batch last set; outputs in signature order.
    fn run(&mut self) -> Result<Vec<Tensor>, EngineError>;
    /// What the last `run` did on a device, for engines that have one (GPU metrics).
    fn device_work(&self) -> Option<DeviceWork> {
        None
    }
}

/// One batch's work on a GPU: what crossed the bus and how long the device computed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceWork {
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// From the first kernel to the last (CUDA events), copies excluded.
    pub kernel_seconds: f64,
}

/// Why a model did not load or a batch did not run. `Clone`, so one failed batch can answer every
/// request in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("model uses {0}, which this engine does not support")]
    Unsupported(String),
    #[error("inference failed: {0}")]
    Run(String),
}
