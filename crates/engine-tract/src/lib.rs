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
    BatchInput, ClassLabels, Device, Engine, EngineError, EngineInfo, LoadOptions, Session,
    Signature, TensorSpec,
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
    /// Loads and optimizes the model. Where the file's shapes do not unify as declared, the load
    /// is tried again, each time giving up one source of them: first with one symbol for every
    /// input's unnamed leading dimension (skl2onnx's one-input-per-column models, unbatched),
    /// then also without the file's intermediate shape annotations (`value_info`, which
    /// onnxruntime treats as hints, and exporters sometimes write with their own batch names).
    /// A model that loads as declared is never loaded otherwise.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<TractEngine, EngineError> {
        let load_err = |e: &dyn std::fmt::Display| EngineError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let onnx = onnx();
        let mut proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| load_err(&format!("{e:#}")))?;
        unique_node_names(&mut proto);
        let zipmaps = cairn_core::onnx_scan::zipmap_outputs(path)
            .map_err(|e| load_err(&format!("reading the model's ZipMap nodes: {e}")))?;
        let mut attempts = vec![Shapes::Declared];
        if !options.batch_dim && unnamed_leading_dims(&proto) > 1 {
            attempts.push(Shapes::SharedLeading);
        }
        if proto
            .graph
            .as_ref()
            .is_some_and(|g| !g.value_info.is_empty())
        {
            attempts.push(Shapes::WithoutValueInfo);
        }
        let mut first: Option<EngineError> = None;
        for (i, shapes) in attempts.iter().enumerate() {
            let e = match build(&onnx, &proto, path, options, *shapes, &zipmaps) {
                Ok(engine) => return Ok(engine),
                Err(e) => e,
            };
            let unify = matches!(&e, EngineError::Load { reason, .. } if reason.contains("Impossible to unify"));
            if !unify || i + 1 == attempts.len() {
                return Err(match first {
                    Some(EngineError::Load { path, reason }) => EngineError::Load {
                        path,
                        reason: format!(
                            "{reason} (loading it again with one symbol for the inputs' leading \
                             dimensions, or without the file's intermediate shapes, failed too)"
                        ),
                    },
                    Some(other) => other,
                    None => e,
                });
            }
            first.get_or_insert(e);
        }
        unreachable!("the last attempt returns")
    }
}

/// Which of the file's shapes a load takes as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shapes {
    /// As declared (unnamed dimensions get a symbol each).
    Declared,
    /// One symbol, `N`, for every input's unnamed leading dimension.
    SharedLeading,
    /// As `SharedLeading`, and the intermediate `value_info` shapes ignored.
    WithoutValueInfo,
}

/// Gives every node of the main graph a name no other node has. tract names an unnamed node
/// after its first output and refuses a graph where two nodes share a name; onnxconverter's
/// FP16 conversion writes exactly that (an unnamed node whose output is `_cast_to_<output>`
/// beside the Cast node of that name), and onnxruntime, which ignores node names, serves it.
fn unique_node_names(proto: &mut tract_onnx::pb::ModelProto) {
    use std::collections::HashSet;
    let Some(g) = proto.graph.as_mut() else {
        return;
    };
    let mut taken: HashSet<String> = g
        .node
        .iter()
        .filter(|n| !n.name.is_empty())
        .map(|n| n.name.clone())
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, node) in g.node.iter_mut().enumerate() {
        let wanted = if !node.name.is_empty() {
            node.name.clone()
        } else if let Some(out) = node.output.first().filter(|o| !o.is_empty()) {
            out.clone()
        } else {
            format!("{i}-{}", node.op_type)
        };
        // A named node keeps its name the first time it is seen; an unnamed one takes tract's
        // default only where no node is called that.
        let free = if node.name.is_empty() {
            !taken.contains(&wanted)
        } else {
            !seen.contains(&wanted)
        };
        let name = if free {
            wanted
        } else {
            (1..)
                .map(|k| format!("{wanted}#{k}"))
                .find(|n| !taken.contains(n))
                .expect("an unbounded range finds a free name")
        };
        taken.insert(name.clone());
        seen.insert(name.clone());
        node.name = name;
    }
}

/// How many graph inputs (not initializers) have a leading dimension with neither a value nor
/// a name.
fn unnamed_leading_dims(proto: &tract_onnx::pb::ModelProto) -> usize {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let Some(g) = &proto.graph else { return 0 };
    g.input
        .iter()
        .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
        .filter(|i| {
            let Some(type_proto::Value::TensorType(t)) =
                i.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return false;
            };
            t.shape
                .as_ref()
                .and_then(|s| s.dim.first())
                .is_some_and(|d| match &d.value {
                    None => true,
                    Some(Value::DimParam(p)) => p.is_empty() || p == "?",
                    Some(Value::DimValue(_)) => false,
                })
        })
        .count()
}

fn build(
    onnx: &tract_onnx::Onnx,
    proto: &tract_onnx::pb::ModelProto,
    path: &Path,
    options: &LoadOptions,
    shapes: Shapes,
    zipmaps: &[(String, ClassLabels)],
) -> Result<TractEngine, EngineError> {
    let load_err = |e: &dyn std::fmt::Display| load_error(path, e);
    let mut model = parse(onnx, proto, path, shapes)?;
    let batch = batch_symbol(&model, options).map_err(|e| load_err(&e))?;
    let (inputs, input_types) = fix_inputs(&mut model, path, options, shapes, &batch)?;

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
    let outputs = output_specs(&typed, output_names, path, options, &batch, zipmaps)?;
    let plan = typed
        .into_runnable()
        .map_err(|e| load_err(&format!("{e:#}")))?;
    Ok(TractEngine {
        plan,
        signature: Signature { inputs, outputs },
        input_types,
    })
}

/// A failed load of the model at `path`: every step's errors name the file.
fn load_error(path: &Path, e: &dyn std::fmt::Display) -> EngineError {
    EngineError::Load {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The model as tract reads it, refused here where tract could not resolve its inputs or
/// lacks one of its operators.
fn parse(
    onnx: &tract_onnx::Onnx,
    proto: &tract_onnx::pb::ModelProto,
    path: &Path,
    shapes: Shapes,
) -> Result<InferenceModel, EngineError> {
    let load_err = |e: &dyn std::fmt::Display| load_error(path, e);
    // External data is looked up beside the model, as tract's own model_for_path does.
    let dir = path.parent().and_then(|d| d.to_str());
    let onnx = onnx
        .clone()
        .with_ignore_value_info(shapes == Shapes::WithoutValueInfo);
    let parsed = onnx
        .parse(proto, dir)
        .map_err(|e| load_err(&format!("{e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(load_err(&format!(
            "could not resolve inputs at top level: {:?}",
            parsed.unresolved_inputs
        )));
    }
    let missing = unimplemented_ops(&parsed.model);
    if !missing.is_empty() {
        return Err(load_err(&format!(
            "tract does not implement the operator {}: [engine] kind = \"ort\" (onnxruntime) or \
             \"auto\" (the first engine that serves it) does",
            missing.join(", ")
        )));
    }
    Ok(parsed.model)
}

/// The operators tract has no implementation of (and we have none in its place), once each in
/// graph order: named, with what serves them, before the optimizer fails on them less clearly.
fn unimplemented_ops(model: &InferenceModel) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    for node in model.nodes() {
        let name = node.op.name();
        if let Some(op) = name
            .strip_prefix("Unimplemented(")
            .and_then(|n| n.strip_suffix(')'))
        {
            if !missing.iter().any(|m| m == op) {
                missing.push(op.to_string());
            }
        }
    }
    missing
}

/// The batch symbol: the inputs' own name for their leading dimension where they all declare
/// the same one (so that intermediate shapes naming it agree), else `N`.
fn batch_symbol(model: &InferenceModel, options: &LoadOptions) -> TractResult<Symbol> {
    let input_count = model.input_outlets()?.len();
    let mut leading = Vec::with_capacity(input_count);
    for ix in 0..input_count {
        let fact = model.input_fact(ix)?;
        leading.push(match fact.shape.dims().next() {
            Some(GenericFactoid::Only(TDim::Sym(s))) => Some(s.clone()),
            _ => None,
        });
    }
    Ok(match leading.first() {
        Some(Some(s)) if options.batch_dim && leading.iter().all(|l| l.as_ref() == Some(s)) => {
            s.clone()
        }
        _ => model.sym("N"),
    })
}

/// Gives every input a concrete type and a full shape (the batch symbol first where the model
/// is batched, then declared values, then the configured hints, then a symbol of its own), and
/// describes the inputs as served.
fn fix_inputs(
    model: &mut InferenceModel,
    path: &Path,
    options: &LoadOptions,
    shapes: Shapes,
    batch: &Symbol,
) -> Result<(Vec<TensorSpec>, Vec<DatumType>), EngineError> {
    let load_err = |e: &dyn std::fmt::Display| load_error(path, e);
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
        let dtype = to_host_type(dt)
            .ok_or_else(|| EngineError::Unsupported(format!("input '{name}' of type {dt:?}")))?;
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
                    (None, None) if j == 0 && shapes != Shapes::Declared => {
                        TDim::Sym(batch.clone())
                    }
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
    Ok((inputs, input_types))
}

/// Describes the optimized model's outputs as served, with their ZipMap classes, refusing in
/// a batched model an output that cannot be split per request.
fn output_specs(
    typed: &TypedModel,
    names: Vec<String>,
    path: &Path,
    options: &LoadOptions,
    batch: &Symbol,
    zipmaps: &[(String, ClassLabels)],
) -> Result<Vec<TensorSpec>, EngineError> {
    let load_err = |e: &dyn std::fmt::Display| load_error(path, e);
    let mut outputs = Vec::with_capacity(names.len());
    for (ix, name) in names.into_iter().enumerate() {
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
    Ok(outputs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn zoo(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/models/zoo")
            .join(name)
            .join("1/model.onnx")
    }

    fn declared(name: &str, batch_dim: bool) -> Result<TractEngine, EngineError> {
        let path = zoo(name);
        let proto = onnx().proto_model_for_path(&path).unwrap();
        let options = LoadOptions {
            batch_dim,
            ..LoadOptions::default()
        };
        build(&onnx(), &proto, &path, &options, Shapes::Declared, &[])
    }

    fn reason(e: Result<TractEngine, EngineError>) -> String {
        match e {
            Ok(_) => panic!("loads as declared"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shapes_that_do_not_unify_as_declared_load_on_a_later_attempt() {
        // Unbatched, skl2onnx's unnamed leading dimensions are four symbols that Concat joins.
        let e = reason(declared("columns-onehot", false));
        assert!(e.contains("Impossible to unify"), "{e}");
        let options = LoadOptions::default();
        let engine = TractEngine::load(&zoo("columns-onehot"), &options).unwrap();
        assert!(engine.signature().inputs.iter().all(|i| i.dims == [-1, 1]));
        // Intermediate shapes that name the batch otherwise than the input does.
        let e = reason(declared("torch-style-renamed", true));
        assert!(e.contains("Sym(batch_size)"), "{e}");
        let options = LoadOptions {
            batch_dim: true,
            ..LoadOptions::default()
        };
        TractEngine::load(&zoo("torch-style-renamed"), &options).unwrap();
        // Intermediate shapes that name it as the input does: the batch takes their name.
        declared("torch-style", true).unwrap();
    }

    #[test]
    fn an_operator_without_an_implementation_is_named_with_what_serves_it() {
        use tract_onnx::pb::{
            tensor_shape_proto::dimension::Value, tensor_shape_proto::Dimension, type_proto,
            GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
            ValueInfoProto,
        };
        let dim = |v| Dimension {
            value: Some(v),
            ..Default::default()
        };
        let x = ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(Value::DimParam("N".into())), dim(Value::DimValue(2))],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: "DictVectorizer".into(),
                    domain: "ai.onnx.ml".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![x],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = LoadOptions::default();
        let e = reason(build(
            &onnx(),
            &proto,
            Path::new("m.onnx"),
            &options,
            Shapes::Declared,
            &[],
        ));
        assert!(
            e.contains("tract does not implement the operator DictVectorizer")
                && e.contains("[engine] kind = \"ort\""),
            "{e}"
        );
    }
}
