//! Engines: what runs a model on a batch of host tensors.
//!
//! An [`Engine`] is the immutable, shared, loaded model (an optimized plan); a [`Session`] is one
//! worker's reusable run state. Sessions are driven only from `batching`'s worker threads, never
//! from a tokio worker. Nothing here knows HTTP, JSON or routing: engines see only
//! `crate::tensor` types, and their errors are plain strings wrapped in [`EngineError`].

mod tract;

use std::path::Path;
use std::sync::Arc;

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
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The first dimension of every input and output is the batch dimension, shared by all.
    pub batch_dim: bool,
    /// Shapes the configuration pins for inputs whose model dims are unknown or variable: name and
    /// full dims (-1 stays variable).
    pub input_dims: Vec<(String, Vec<i64>)>,
}

/// One input of a batch: the parts (one per request, in order) are concatenated along the first
/// dimension into one tensor of `shape`. Parts have the input's datatype, checked upstream.
pub struct BatchInput<'a> {
    pub shape: Vec<usize>,
    pub parts: Vec<&'a Tensor>,
}

/// A loaded model, shared by every worker of a version.
pub trait Engine: Send + Sync + 'static {
    fn signature(&self) -> &Signature;
    /// A name for logs and metadata (`tract_onnx`, after Triton's `onnxruntime_onnx`).
    fn platform(&self) -> &'static str;
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

/// Loads a model file with the engine of its backend.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(Arc::new(tract::TractEngine::load(path, options)?))
}
