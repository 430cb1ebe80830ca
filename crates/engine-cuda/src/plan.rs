//! The CUDA engine's graph compiler: an ONNX graph in the dense subset becomes a short list of
//! steps over row-major `[rows, width]` buffers, with the fusions and the buffer plan decided at
//! load, so that running a batch is only a fixed sequence of GEMMs and small kernels.
//!
//! The subset is what scikit-learn and most tabular MLP exports contain: MatMul / Gemm with a
//! constant weight, Add / Sub / Mul with a constant, Relu / Sigmoid / Tanh, Softmax, Concat
//! along the features, ArgMax, and the label tail (ArrayFeatureExtractor over constant classes,
//! Reshape, Cast, Identity). Anything else refuses the model, naming the node and its op, so the
//! factory can fall back to a CPU engine.
//!
//! Fusions: a constant bias added to a GEMM's result, and then an activation applied to it, run
//! inside the GEMM's epilogue when nothing else reads the intermediate values. Buffer plan: each
//! device value gets a slot; a slot is reused by a later step once its last reader has run, and
//! values the host needs (graph outputs, the label tail's inputs) stay live to the end.
//!
//! [`Plan::run_host`] executes the same steps on the CPU: the reference the tests hold against
//! tract, and what the device executor's outputs are compared with.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// Element type of a computed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::I64 => 8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Sigmoid,
    Tanh,
}

/// Where a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Device,
    Host,
}

/// A computed `[rows, width]` value (rows = the batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub width: usize,
    pub elem: Elem,
    pub place: Place,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `out = act(x · w + bias)`, `w` row-major `[k, m]`.
    Gemm {
        x: usize,
        w: Vec<f32>,
        k: usize,
        m: usize,
        bias: Option<Vec<f32>>,
        act: Activation,
        out: usize,
    },
    /// `out = x * scale + offset`, each a single value or one per column.
    Affine {
        x: usize,
        scale: Vec<f32>,
        offset: Vec<f32>,
        out: usize,
    },
    Activation {
        x: usize,
        act: Activation,
        out: usize,
    },
    /// Along the features of each row.
    Softmax { x: usize, out: usize },
    /// Columns of each input side by side.
    Concat { xs: Vec<usize>, out: usize },
    /// Index of the first largest value of each row (INT64).
    ArgMax { x: usize, out: usize },
    /// `out = classes[index]` per element (ArrayFeatureExtractor with constant classes).
    Gather {
        classes: Vec<i64>,
        index: usize,
        out: usize,
    },
}

impl Step {
    pub fn reads(&self) -> Vec<usize> {
        match self {
            Step::Gemm { x, .. }
            | Step::Affine { x, .. }
            | Step::Activation { x, .. }
            | Step::Softmax { x, .. }
            | Step::ArgMax { x, .. } => vec![*x],
            Step::Concat { xs, .. } => xs.clone(),
            Step::Gather { index, .. } => vec![*index],
        }
    }

    pub fn writes(&self) -> usize {
        match self {
            Step::Gemm { out, .. }
            | Step::Affine { out, .. }
            | Step::Activation { out, .. }
            | Step::Softmax { out, .. }
            | Step::Concat { out, .. }
            | Step::ArgMax { out, .. }
            | Step::Gather { out, .. } => *out,
        }
    }

    pub fn place(&self) -> Place {
        match self {
            Step::Gather { .. } => Place::Host,
            _ => Place::Device,
        }
    }

    /// The op list's name of the step, fusions included (`gemm+bias+relu`).
    pub fn label(&self) -> String {
        match self {
            Step::Gemm {
                bias, act, k, m, ..
            } => {
                let mut s = format!("gemm[{k}x{m}]");
                if bias.is_some() {
                    s.push_str("+bias");
                }
                if *act != Activation::None {
                    s.push_str(&format!("+{}", act_name(*act)));
                }
                s
            }
            Step::Affine { .. } => "affine".into(),
            Step::Activation { act, .. } => act_name(*act).into(),
            Step::Softmax { .. } => "softmax".into(),
            Step::Concat { xs, .. } => format!("concat[{}]", xs.len()),
            Step::ArgMax { .. } => "argmax".into(),
            Step::Gather { .. } => "gather".into(),
        }
    }
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::None => "none",
        Activation::Relu => "relu",
        Activation::Sigmoid => "sigmoid",
        Activation::Tanh => "tanh",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    pub name: String,
    pub buffer: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanOutput {
    pub name: String,
    pub buffer: usize,
    /// `[rows]` instead of `[rows, width]` (width is then 1).
    pub flat: bool,
}

/// Which device slot holds each device buffer, and each slot's bytes per row.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferPlan {
    pub slot_of: Vec<Option<usize>>,
    pub slot_row_bytes: Vec<usize>,
    /// Device buffers the host reads after the device steps (outputs, host steps' inputs).
    pub copied_back: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub inputs: Vec<PlanInput>,
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    pub outputs: Vec<PlanOutput>,
    pub memory: BufferPlan,
}

/// Why a graph is not in the subset, or is not a graph at all.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    /// The file is not a readable ONNX model.
    Read(String),
    /// A node (or input) outside the subset: refused for the GPU, naming it.
    Unsupported(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Read(r) => write!(f, "{r}"),
            PlanError::Unsupported(r) => write!(f, "{r}"),
        }
    }
}

/// A value during compilation: a constant, or a computed buffer (maybe seen flat).
#[derive(Clone, Debug)]
enum Value {
    Const(Constant),
    Dyn { buffer: usize, flat: bool },
}

#[derive(Clone, Debug)]
struct Constant {
    dims: Vec<i64>,
    floats: Option<Vec<f32>>,
    ints: Option<Vec<i64>>,
}

/// Largest constant a plan takes (4 GiB of f32 would not fit a GPU worth using anyway).
const MAX_CONSTANT_ELEMENTS: u64 = 1 << 30;

impl Plan {
    pub fn compile_path(path: &Path, input_dims: &[(String, Vec<i64>)]) -> Result<Plan, PlanError> {
        let proto = tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| PlanError::Read(format!("{e:#}")))?;
        Plan::compile(&proto, input_dims)
    }

    pub fn compile(
        model: &pb::ModelProto,
        input_dims: &[(String, Vec<i64>)],
    ) -> Result<Plan, PlanError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| PlanError::Read("the model has no graph".into()))?;
        let mut c = Compiler::default();
        for t in &graph.initializer {
            c.values.insert(t.name.clone(), Value::Const(constant(t)?));
        }
        for input in &graph.input {
            if c.values.contains_key(&input.name) {
                continue;
            }
            let width = input_width(input, input_dims)?;
            let buffer = c.buffer(width, Elem::F32, Place::Device);
            c.inputs.push(PlanInput {
                name: input.name.clone(),
                buffer,
            });
            c.values.insert(
                input.name.clone(),
                Value::Dyn {
                    buffer,
                    flat: false,
                },
            );
        }
        // How many nodes read each name: a fusion needs the intermediate read once only.
        for node in &graph.node {
            for i in &node.input {
                *c.readers.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &graph.output {
            *c.readers.entry(o.name.clone()).or_default() += 1;
        }
        for node in &graph.node {
            c.node(node)?;
        }
        let mut outputs = Vec::with_capacity(graph.output.len());
        for o in &graph.output {
            match c.values.get(&o.name) {
                Some(Value::Dyn { buffer, flat }) => outputs.push(PlanOutput {
                    name: o.name.clone(),
                    buffer: *buffer,
                    flat: *flat,
                }),
                Some(Value::Const(_)) => {
                    return Err(PlanError::Unsupported(format!(
                        "output '{}' is a constant",
                        o.name
                    )))
                }
                None => {
                    return Err(PlanError::Read(format!(
                        "output '{}' is computed by no node",
                        o.name
                    )))
                }
            }
        }
        if c.inputs.is_empty() {
            return Err(PlanError::Unsupported("the graph has no input".into()));
        }
        let memory = buffer_plan(&c.buffers, &c.steps, &outputs)?;
        Ok(Plan {
            inputs: c.inputs,
            buffers: c.buffers,
            steps: c.steps,
            outputs,
            memory,
        })
    }

    /// The op list, fusions shown: `gemm[4x16]+bias+relu, gemm[16x3]+bias, softmax, ...`.
    pub fn op_list(&self) -> Vec<String> {
        self.steps.iter().map(Step::label).collect()
    }

    /// Weights and biases the device holds for the version.
    pub fn weight_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Gemm { w, bias, .. } => 4 * (w.len() + bias.as_ref().map_or(0, Vec::len)),
                Step::Affine { scale, offset, .. } => 4 * (scale.len() + offset.len()),
                _ => 0,
            })
            .sum()
    }

    /// Runs every step on the CPU: `inputs` in plan order, each `rows × width` row-major.
    pub fn run_host(&self, inputs: &[&[f32]], rows: usize) -> Result<Vec<HostValue>, String> {
        let mut values: Vec<Option<HostValue>> = vec![None; self.buffers.len()];
        if inputs.len() != self.inputs.len() {
            return Err(format!(
                "{} inputs given, the plan has {}",
                inputs.len(),
                self.inputs.len()
            ));
        }
        for (input, data) in self.inputs.iter().zip(inputs) {
            let width = self.buffers[input.buffer].width;
            if data.len() != rows * width {
                return Err(format!(
                    "input '{}' has {} values, {rows} rows of {width} need {}",
                    input.name,
                    data.len(),
                    rows * width
                ));
            }
            values[input.buffer] = Some(HostValue::F32(data.to_vec()));
        }
        for step in &self.steps {
            let out = host_step(step, &values, &self.buffers, rows)?;
            values[step.writes()] = Some(out);
        }
        self.collect(values)
    }

    /// After the device steps: `values` holds what was copied back; runs the host steps and
    /// returns the outputs in plan order.
    pub fn finish_on_host(
        &self,
        mut values: Vec<Option<HostValue>>,
        rows: usize,
    ) -> Result<Vec<HostValue>, String> {
        for step in self.steps.iter().filter(|s| s.place() == Place::Host) {
            let out = host_step(step, &values, &self.buffers, rows)?;
            values[step.writes()] = Some(out);
        }
        self.collect(values)
    }

    fn collect(&self, values: Vec<Option<HostValue>>) -> Result<Vec<HostValue>, String> {
        self.outputs
            .iter()
            .map(|o| {
                values[o.buffer]
                    .clone()
                    .ok_or_else(|| format!("output '{}' was not computed", o.name))
            })
            .collect()
    }
}

/// A host-side value of `rows × width` elements.
#[derive(Clone, Debug, PartialEq)]
pub enum HostValue {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl HostValue {
    fn f32(&self) -> Result<&[f32], String> {
        match self {
            HostValue::F32(v) => Ok(v),
            HostValue::I64(_) => Err("an INT64 value where FP32 is needed".into()),
        }
    }
}

pub fn activate(a: Activation, v: f32) -> f32 {
    match a {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Activation::Tanh => v.tanh(),
    }
}

fn host_step(
    step: &Step,
    values: &[Option<HostValue>],
    buffers: &[Buffer],
    rows: usize,
) -> Result<HostValue, String> {
    let get = |b: usize| {
        values[b]
            .as_ref()
            .ok_or_else(|| format!("buffer {b} read before it was written"))
    };
    Ok(match step {
        Step::Gemm {
            x,
            w,
            k,
            m,
            bias,
            act,
            ..
        } => {
            let x = get(*x)?.f32()?;
            HostValue::F32(host_gemm(x, w, *k, *m, bias.as_deref(), *act, rows))
        }
        Step::Affine {
            x,
            scale,
            offset,
            out,
        } => {
            let width = buffers[*out].width;
            let x = get(*x)?.f32()?;
            let pick = |v: &[f32], j: usize| if v.len() == 1 { v[0] } else { v[j] };
            HostValue::F32(
                x.iter()
                    .enumerate()
                    .map(|(i, &v)| v * pick(scale, i % width) + pick(offset, i % width))
                    .collect(),
            )
        }
        Step::Activation { x, act, .. } => {
            HostValue::F32(get(*x)?.f32()?.iter().map(|&v| activate(*act, v)).collect())
        }
        Step::Softmax { x, out } => {
            let width = buffers[*out].width;
            HostValue::F32(host_softmax(get(*x)?.f32()?, width))
        }
        Step::Concat { xs, out } => {
            let width = buffers[*out].width;
            let mut o = Vec::with_capacity(rows * width);
            let parts: Vec<(&[f32], usize)> = xs
                .iter()
                .map(|&b| Ok((get(b)?.f32()?, buffers[b].width)))
                .collect::<Result<_, String>>()?;
            for r in 0..rows {
                for (p, w) in &parts {
                    o.extend_from_slice(&p[r * w..(r + 1) * w]);
                }
            }
            HostValue::F32(o)
        }
        Step::ArgMax { x, .. } => {
            let width = buffers[*x].width;
            let x = get(*x)?.f32()?;
            HostValue::I64(
                x.chunks(width)
                    .map(|row| {
                        let mut best = 0;
                        for (j, &v) in row.iter().enumerate() {
                            if v > row[best] {
                                best = j;
                            }
                        }
                        best as i64
                    })
                    .collect(),
            )
        }
        Step::Gather { classes, index, .. } => match get(*index)? {
            HostValue::I64(ix) => HostValue::I64(
                ix.iter()
                    .map(|&i| {
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| classes.get(i).copied())
                            .ok_or_else(|| format!("class index {i} out of range"))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            HostValue::F32(_) => return Err("gather indices are not INT64".into()),
        },
    })
}

/// `act(x · w + bias)` for `rows` rows, as the fused GEMM step computes it.
fn host_gemm(
    x: &[f32],
    w: &[f32],
    k: usize,
    m: usize,
    bias: Option<&[f32]>,
    act: Activation,
    rows: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * m];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        let or = &mut out[r * m..(r + 1) * m];
        for (kk, &xv) in xr.iter().enumerate() {
            let wr = &w[kk * m..(kk + 1) * m];
            for (o, &wv) in or.iter_mut().zip(wr) {
                *o += xv * wv;
            }
        }
        for (j, o) in or.iter_mut().enumerate() {
            let b = bias.map_or(0.0, |b| b[j]);
            *o = activate(act, *o + b);
        }
    }
    out
}

/// Softmax along each row of `width` values, shifted by the row's largest value.
fn host_softmax(x: &[f32], width: usize) -> Vec<f32> {
    let mut o = x.to_vec();
    for row in o.chunks_mut(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    o
}

#[derive(Default)]
struct Compiler {
    values: HashMap<String, Value>,
    readers: HashMap<String, usize>,
    buffers: Vec<Buffer>,
    steps: Vec<Step>,
    inputs: Vec<PlanInput>,
}

impl Compiler {
    fn buffer(&mut self, width: usize, elem: Elem, place: Place) -> usize {
        self.buffers.push(Buffer { width, elem, place });
        self.buffers.len() - 1
    }

    fn value(&self, node: &pb::NodeProto, name: &str) -> Result<Value, PlanError> {
        self.values.get(name).cloned().ok_or_else(|| {
            PlanError::Read(format!(
                "node '{}' ({}) reads '{name}', which nothing computes",
                node.name, node.op_type
            ))
        })
    }

    /// A computed FP32 `[rows, width]` operand.
    fn dyn_f32(&self, node: &pb::NodeProto, name: &str) -> Result<usize, PlanError> {
        match self.value(node, name)? {
            Value::Dyn { buffer, .. } if self.buffers[buffer].elem == Elem::F32 => Ok(buffer),
            Value::Dyn { .. } => Err(unsupported(node, "an INT64 operand where FP32 is needed")),
            Value::Const(_) => Err(unsupported(
                node,
                "a constant where a computed value is needed",
            )),
        }
    }

    fn push(&mut self, node: &pb::NodeProto, step: Step) {
        let out = step.writes();
        self.steps.push(step);
        self.define(node, out, false);
    }

    fn define(&mut self, node: &pb::NodeProto, buffer: usize, flat: bool) {
        if let Some(name) = node.output.first() {
            self.values
                .insert(name.clone(), Value::Dyn { buffer, flat });
        }
    }

    /// The last step, when it wrote `buffer` and nothing but this node reads its value: a
    /// fusion may then change it in place.
    /// A node fused into the step before it no longer reads that step's value as a separate
    /// reader: its reads leave the count, so the fused result can fuse again.
    fn absorbed(&mut self, node: &pb::NodeProto) {
        for name in &node.input {
            if let Some(r) = self.readers.get_mut(name) {
                *r = r.saturating_sub(1);
            }
        }
    }

    fn fusable(&mut self, buffer: usize) -> Option<&mut Step> {
        // Every name seen so far for the buffer (Identity, Reshape and Cast alias it): their
        // readers together must be this node alone. Later aliases can only come from readers.
        let readers: usize = self
            .values
            .iter()
            .filter(|(_, v)| matches!(v, Value::Dyn { buffer: b, .. } if *b == buffer))
            .map(|(name, _)| self.readers.get(name).copied().unwrap_or(0))
            .sum();
        if readers != 1 {
            return None;
        }
        self.steps.last_mut().filter(|s| s.writes() == buffer)
    }

    fn node(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        if !node.domain.is_empty()
            && node.domain != "ai.onnx"
            && node.op_type != "ArrayFeatureExtractor"
        {
            return Err(unsupported(
                node,
                &format!("op {}.{}", node.domain, node.op_type),
            ));
        }
        if node.output.len() != 1 {
            return Err(unsupported(node, "more than one output"));
        }
        match node.op_type.as_str() {
            "Identity" => {
                let v = self.value(node, input(node, 0)?)?;
                self.values.insert(node.output[0].clone(), v);
            }
            "Cast" => self.cast(node)?,
            "MatMul" | "Gemm" => self.gemm(node)?,
            "Add" | "Sub" | "Mul" => self.affine(node)?,
            "Relu" | "Sigmoid" | "Tanh" => self.activation(node)?,
            "Softmax" => {
                let axis = attr_i(node, "axis").unwrap_or(-1);
                if axis != -1 && axis != 1 {
                    return Err(unsupported(node, &format!("softmax along axis {axis}")));
                }
                let x = self.dyn_f32(node, input(node, 0)?)?;
                let out = self.buffer(self.buffers[x].width, Elem::F32, Place::Device);
                self.push(node, Step::Softmax { x, out });
            }
            "Concat" => {
                let axis = attr_i(node, "axis").unwrap_or(0);
                if axis != 1 && axis != -1 {
                    return Err(unsupported(
                        node,
                        &format!("concatenation along axis {axis}"),
                    ));
                }
                let xs = node
                    .input
                    .iter()
                    .map(|i| self.dyn_f32(node, i))
                    .collect::<Result<Vec<_>, _>>()?;
                let width = xs.iter().map(|&b| self.buffers[b].width).sum();
                let out = self.buffer(width, Elem::F32, Place::Device);
                self.push(node, Step::Concat { xs, out });
            }
            "ArgMax" => {
                let axis = attr_i(node, "axis").unwrap_or(0);
                if axis != 1 && axis != -1 {
                    return Err(unsupported(node, &format!("argmax along axis {axis}")));
                }
                if attr_i(node, "select_last_index").unwrap_or(0) != 0 {
                    return Err(unsupported(node, "select_last_index"));
                }
                let keep = attr_i(node, "keepdims").unwrap_or(1) != 0;
                let x = self.dyn_f32(node, input(node, 0)?)?;
                let out = self.buffer(1, Elem::I64, Place::Device);
                self.steps.push(Step::ArgMax { x, out });
                self.define(node, out, !keep);
            }
            "ArrayFeatureExtractor" => self.gather(node)?,
            "Reshape" => self.reshape(node)?,
            other => return Err(unsupported(node, &format!("op {other}"))),
        }
        Ok(())
    }

    /// A cast to the type the value already has is an alias; any other conversion is refused.
    fn cast(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let to = attr_i(node, "to").unwrap_or(0);
        match self.value(node, input(node, 0)?)? {
            Value::Dyn { buffer, flat } => {
                let elem = self.buffers[buffer].elem;
                let same = matches!((elem, to), (Elem::F32, 1) | (Elem::I64, 7));
                if !same {
                    return Err(unsupported(
                        node,
                        &format!("a cast of {elem:?} to ONNX type {to}"),
                    ));
                }
                self.define(node, buffer, flat);
            }
            Value::Const(_) => return Err(unsupported(node, "a cast of a constant")),
        }
        Ok(())
    }

    /// Relu / Sigmoid / Tanh: into the epilogue of the GEMM before it where that one has no
    /// activation yet, else a step of its own.
    fn activation(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let act = match node.op_type.as_str() {
            "Relu" => Activation::Relu,
            "Sigmoid" => Activation::Sigmoid,
            _ => Activation::Tanh,
        };
        let x = self.dyn_f32(node, input(node, 0)?)?;
        if let Some(Step::Gemm {
            act: a @ Activation::None,
            ..
        }) = self.fusable(x)
        {
            *a = act;
            self.absorbed(node);
            self.define(node, x, false);
        } else {
            let out = self.buffer(self.buffers[x].width, Elem::F32, Place::Device);
            self.push(node, Step::Activation { x, act, out });
        }
        Ok(())
    }

    /// ArrayFeatureExtractor over constant integer classes: the label tail, run on the host.
    fn gather(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let classes = match self.value(node, input(node, 0)?)? {
            Value::Const(c) => c
                .ints
                .ok_or_else(|| unsupported(node, "classes that are not integers"))?,
            Value::Dyn { .. } => return Err(unsupported(node, "computed classes")),
        };
        let (index, flat) = match self.value(node, input(node, 1)?)? {
            Value::Dyn { buffer, flat } if self.buffers[buffer].elem == Elem::I64 => (buffer, flat),
            _ => return Err(unsupported(node, "indices that are not computed INT64")),
        };
        let out = self.buffer(1, Elem::I64, Place::Host);
        self.steps.push(Step::Gather {
            classes,
            index,
            out,
        });
        self.define(node, out, flat);
        Ok(())
    }

    /// A reshape that keeps `[rows, width]` (or flattens a one-column value to `[rows]`) is an
    /// alias; any other shape is refused.
    fn reshape(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let (buffer, _) = match self.value(node, input(node, 0)?)? {
            Value::Dyn { buffer, flat } => (buffer, flat),
            Value::Const(_) => return Err(unsupported(node, "a reshape of a constant")),
        };
        let shape = match self.value(node, input(node, 1)?)? {
            Value::Const(c) => c
                .ints
                .ok_or_else(|| unsupported(node, "a shape that is not INT64"))?,
            Value::Dyn { .. } => return Err(unsupported(node, "a computed shape")),
        };
        let width = self.buffers[buffer].width as i64;
        let flat = match shape.as_slice() {
            [-1] if width == 1 => true,
            [-1 | 0, w] if *w == width => false,
            _ => {
                return Err(unsupported(
                    node,
                    &format!("a reshape of [rows, {width}] to {shape:?}"),
                ))
            }
        };
        self.define(node, buffer, flat);
        Ok(())
    }

    fn gemm(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let x = self.dyn_f32(node, input(node, 0)?)?;
        let weight = match self.value(node, input(node, 1)?)? {
            Value::Const(c) => c,
            Value::Dyn { .. } => return Err(unsupported(node, "a product of two computed values")),
        };
        let floats = weight
            .floats
            .as_ref()
            .ok_or_else(|| unsupported(node, "a weight that is not FP32"))?;
        let [k0, m0] = weight.dims[..] else {
            return Err(unsupported(
                node,
                &format!("a weight of shape {:?}", weight.dims),
            ));
        };
        let (k0, m0) = (k0 as usize, m0 as usize);
        let gemm = node.op_type == "Gemm";
        if gemm && attr_i(node, "transA").unwrap_or(0) != 0 {
            return Err(unsupported(node, "transA"));
        }
        let trans_b = gemm && attr_i(node, "transB").unwrap_or(0) != 0;
        let alpha = if gemm {
            attr_f(node, "alpha").unwrap_or(1.0)
        } else {
            1.0
        };
        let beta = if gemm {
            attr_f(node, "beta").unwrap_or(1.0)
        } else {
            1.0
        };
        let (k, m) = if trans_b { (m0, k0) } else { (k0, m0) };
        let mut w = vec![0f32; k * m];
        for r in 0..k0 {
            for c in 0..m0 {
                let v = floats[r * m0 + c] * alpha;
                if trans_b {
                    w[c * m + r] = v;
                } else {
                    w[r * m + c] = v;
                }
            }
        }
        if self.buffers[x].width != k {
            return Err(unsupported(
                node,
                &format!(
                    "a product of width {} by a {k}x{m} weight",
                    self.buffers[x].width
                ),
            ));
        }
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(name) => match self.value(node, name)? {
                Value::Const(c) => {
                    let v = row_vector(node, &c, m)?;
                    // One value broadcast: one per column, as the epilogue reads them.
                    let v = if v.len() == 1 { vec![v[0]; m] } else { v };
                    Some(v.iter().map(|x| x * beta).collect())
                }
                Value::Dyn { .. } => return Err(unsupported(node, "a computed bias")),
            },
            None => None,
        };
        let out = self.buffer(m, Elem::F32, Place::Device);
        self.push(
            node,
            Step::Gemm {
                x,
                w,
                k,
                m,
                bias,
                act: Activation::None,
                out,
            },
        );
        Ok(())
    }

    /// Add / Sub / Mul of a computed value and a constant (row vector or scalar).
    fn affine(&mut self, node: &pb::NodeProto) -> Result<(), PlanError> {
        let a = self.value(node, input(node, 0)?)?;
        let b = self.value(node, input(node, 1)?)?;
        let (x, c, const_first) = match (a, b) {
            (Value::Dyn { buffer, .. }, Value::Const(c)) => (buffer, c, false),
            (Value::Const(c), Value::Dyn { buffer, .. }) => (buffer, c, true),
            _ => {
                return Err(unsupported(
                    node,
                    "an elementwise op on two computed values or two constants",
                ))
            }
        };
        if self.buffers[x].elem != Elem::F32 {
            return Err(unsupported(node, "an INT64 operand"));
        }
        let width = self.buffers[x].width;
        let values = row_vector(node, &c, width)?;
        let ones = vec![1.0];
        let zeros = vec![0.0];
        let (scale, offset) = match (node.op_type.as_str(), const_first) {
            ("Add", _) => (ones, values),
            ("Sub", false) => (ones, values.iter().map(|v| -v).collect()),
            ("Sub", true) => (vec![-1.0], values),
            _ => (values, zeros),
        };
        // A bias after a GEMM: into its epilogue.
        if scale == [1.0] && offset.len() == width {
            if let Some(Step::Gemm {
                bias: bias @ None,
                act: Activation::None,
                ..
            }) = self.fusable(x)
            {
                *bias = Some(offset);
                self.absorbed(node);
                self.define(node, x, false);
                return Ok(());
            }
        }
        let out = self.buffer(width, Elem::F32, Place::Device);
        self.push(
            node,
            Step::Affine {
                x,
                scale,
                offset,
                out,
            },
        );
        Ok(())
    }
}

fn unsupported(node: &pb::NodeProto, what: &str) -> PlanError {
    let name = if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    };
    PlanError::Unsupported(format!(
        "node '{name}' ({}): {what} is outside the CUDA engine's subset",
        node.op_type
    ))
}

fn input(node: &pb::NodeProto, i: usize) -> Result<&str, PlanError> {
    node.input
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| PlanError::Read(format!("node '{}' lacks input {i}", node.name)))
}

fn attr_i(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn attr_f(node: &pb::NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// A constant broadcast along the rows: a scalar, `[width]` or `[1, width]` (one value, `[1]`,
/// stays one value).
fn row_vector(node: &pb::NodeProto, c: &Constant, width: usize) -> Result<Vec<f32>, PlanError> {
    let values = c
        .floats
        .clone()
        .ok_or_else(|| unsupported(node, "a constant that is not FP32"))?;
    let fits = match c.dims[..] {
        [] => true,
        [n] => n as usize == width || n == 1,
        [1, n] => n as usize == width || n == 1,
        _ => false,
    };
    if !fits {
        return Err(unsupported(
            node,
            &format!("a constant of shape {:?} against width {width}", c.dims),
        ));
    }
    Ok(values)
}

fn input_width(
    input: &pb::ValueInfoProto,
    pinned: &[(String, Vec<i64>)],
) -> Result<usize, PlanError> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value as Type;
    let refuse = |what: String| PlanError::Unsupported(format!("input '{}': {what}", input.name));
    let Some(Type::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(refuse("not a tensor".into()));
    };
    if t.elem_type != 1 {
        return Err(refuse(format!(
            "ONNX element type {} (the CUDA engine takes FP32)",
            t.elem_type
        )));
    }
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let hint = pinned
        .iter()
        .find(|(n, _)| *n == input.name)
        .and_then(|(_, d)| d.get(1).copied())
        .filter(|&v| v > 0);
    match dims[..] {
        [_, w] => w
            .or(hint)
            .map(|w| w as usize)
            .ok_or_else(|| refuse("a variable feature dimension".into())),
        _ => Err(refuse(format!(
            "rank {} (the CUDA engine takes [rows, features])",
            dims.len()
        ))),
    }
}

fn constant(t: &pb::TensorProto) -> Result<Constant, PlanError> {
    let bad = |what: &str| PlanError::Read(format!("initializer '{}': {what}", t.name));
    if t.data_location == Some(1) {
        return Err(PlanError::Unsupported(format!(
            "initializer '{}' is stored outside the model file",
            t.name
        )));
    }
    let mut count: u64 = 1;
    for &d in &t.dims {
        let d = u64::try_from(d).map_err(|_| bad("a negative dimension"))?;
        count = count.saturating_mul(d);
    }
    if count > MAX_CONSTANT_ELEMENTS {
        return Err(bad("more elements than the CUDA engine takes"));
    }
    let count = count as usize;
    let raw = |size: usize| {
        if t.raw_data.len() != count * size {
            Err(bad("raw data of the wrong length"))
        } else {
            Ok(t.raw_data.chunks_exact(size))
        }
    };
    let (floats, ints) = match t.data_type {
        1 => {
            let v: Vec<f32> = if !t.raw_data.is_empty() {
                raw(4)?
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            } else {
                t.float_data.clone()
            };
            (Some(v), None)
        }
        6 => {
            let v: Vec<i64> = if !t.raw_data.is_empty() {
                raw(4)?
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            };
            (None, Some(v))
        }
        7 => {
            let v: Vec<i64> = if !t.raw_data.is_empty() {
                raw(8)?
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            } else {
                t.int64_data.clone()
            };
            (None, Some(v))
        }
        _ => (None, None),
    };
    let len = floats
        .as_ref()
        .map(Vec::len)
        .or(ints.as_ref().map(Vec::len));
    if len.is_some_and(|l| l != count) {
        return Err(bad("a value count that does not match its shape"));
    }
    Ok(Constant {
        dims: t.dims.clone(),
        floats,
        ints,
    })
}

/// Slots for the device buffers: a buffer takes a free slot (the smallest that fits, else the
/// largest, widened) once the last reader of the slot's previous buffer has run.
fn buffer_plan(
    buffers: &[Buffer],
    steps: &[Step],
    outputs: &[PlanOutput],
) -> Result<BufferPlan, PlanError> {
    // Host steps run after every device step: a device step may not read a host value.
    let mut host_seen = false;
    for s in steps {
        match s.place() {
            Place::Host => host_seen = true,
            Place::Device if host_seen => {
                return Err(PlanError::Unsupported(format!(
                    "'{}' after a host step: the CUDA engine runs the label tail last",
                    s.label()
                )))
            }
            Place::Device => {}
        }
    }
    let end = steps.len();
    let mut last_use = vec![0usize; buffers.len()];
    let mut copied_back = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for b in s.reads() {
            last_use[b] = last_use[b].max(i);
            if s.place() == Place::Host && buffers[b].place == Place::Device {
                copied_back.push(b);
            }
        }
    }
    for o in outputs {
        if buffers[o.buffer].place == Place::Device {
            copied_back.push(o.buffer);
        }
    }
    copied_back.sort_unstable();
    copied_back.dedup();
    for &b in &copied_back {
        last_use[b] = end;
    }
    let mut slot_of = vec![None; buffers.len()];
    let mut slot_row_bytes: Vec<usize> = Vec::new();
    // Per slot, the last step that reads what it holds.
    let mut busy_until: Vec<usize> = Vec::new();
    let mut assign = |b: usize, at: usize, slot_of: &mut Vec<Option<usize>>| {
        let need = buffers[b].width * buffers[b].elem.bytes();
        let free: Vec<usize> = (0..slot_row_bytes.len())
            .filter(|&s| busy_until[s] < at)
            .collect();
        let pick = free
            .iter()
            .copied()
            .filter(|&s| slot_row_bytes[s] >= need)
            .min_by_key(|&s| slot_row_bytes[s])
            .or_else(|| free.iter().copied().max_by_key(|&s| slot_row_bytes[s]));
        let slot = match pick {
            Some(s) => {
                slot_row_bytes[s] = slot_row_bytes[s].max(need);
                s
            }
            None => {
                slot_row_bytes.push(need);
                busy_until.push(0);
                slot_row_bytes.len() - 1
            }
        };
        busy_until[slot] = last_use[b].max(at);
        slot_of[b] = Some(slot);
    };
    // Inputs are written before step 0; a step's output takes a slot whose last reader ran
    // before it (never one the step itself reads).
    for (b, buf) in buffers.iter().enumerate() {
        if buf.place == Place::Device && !steps.iter().any(|s| s.writes() == b) {
            assign(b, 0, &mut slot_of);
        }
    }
    for (i, s) in steps.iter().enumerate() {
        let b = s.writes();
        if buffers[b].place == Place::Device {
            assign(b, i, &mut slot_of);
        }
    }
    Ok(BufferPlan {
        slot_of,
        slot_row_bytes,
        copied_back,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::tensor_shape_proto::{dimension, Dimension};

    fn weight(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn value(name: &str, width: Option<i64>) -> pb::ValueInfoProto {
        let dim = |v: Option<i64>| Dimension {
            value: Some(match v {
                Some(v) => dimension::Value::DimValue(v),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        };
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![dim(None), dim(width)],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn model(
        nodes: Vec<pb::NodeProto>,
        init: Vec<pb::TensorProto>,
        outputs: &[&str],
    ) -> pb::ModelProto {
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: init,
                input: vec![value("x", Some(2))],
                output: outputs.iter().map(|o| value(o, None)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const W: [f32; 6] = [1.0, -2.0, 0.5, 3.0, 1.0, -1.0];

    #[test]
    fn a_value_read_under_another_name_is_not_fused_over() {
        // h is an output through an Identity and the input of a Relu: the Relu may not run in
        // the GEMM's epilogue, or the output would lose its negative values.
        let m = model(
            vec![
                node("MatMul", &["x", "w"], "h"),
                node("Identity", &["h"], "h_out"),
                node("Relu", &["h"], "r"),
            ],
            vec![weight("w", &[2, 3], &W)],
            &["h_out", "r"],
        );
        let plan = Plan::compile(&m, &[]).unwrap();
        assert_eq!(plan.op_list(), ["gemm[2x3]", "relu"]);
        let out = plan.run_host(&[&[1.0, 1.0]], 1).unwrap();
        assert_eq!(out[0], HostValue::F32(vec![4.0, -1.0, -0.5]));
        assert_eq!(out[1], HostValue::F32(vec![4.0, 0.0, 0.0]));
    }

    #[test]
    fn a_scalar_gemm_bias_is_broadcast_and_alpha_beta_transb_fold_into_the_weights() {
        let mut gemm = node("Gemm", &["x", "wt", "c"], "y");
        gemm.attribute = vec![
            pb::AttributeProto {
                name: "transB".into(),
                i: 1,
                ..Default::default()
            },
            pb::AttributeProto {
                name: "alpha".into(),
                f: 2.0,
                ..Default::default()
            },
            pb::AttributeProto {
                name: "beta".into(),
                f: 0.5,
                ..Default::default()
            },
        ];
        // wt is W transposed: [3, 2].
        let wt = [1.0, 3.0, -2.0, 1.0, 0.5, -1.0];
        let m = model(
            vec![gemm, node("Sigmoid", &["y"], "p")],
            vec![weight("wt", &[3, 2], &wt), weight("c", &[], &[4.0])],
            &["p"],
        );
        let plan = Plan::compile(&m, &[]).unwrap();
        assert_eq!(plan.op_list(), ["gemm[2x3]+bias+sigmoid"]);
        let out = plan.run_host(&[&[1.0, 1.0]], 1).unwrap();
        let want: Vec<f32> = [4.0f32, -1.0, -0.5]
            .iter()
            .map(|v| activate(Activation::Sigmoid, 2.0 * v + 2.0))
            .collect();
        assert_eq!(out[0], HostValue::F32(want));
    }

    #[test]
    fn a_computed_weight_or_a_wide_reshape_is_refused_by_name() {
        let m = model(vec![node("MatMul", &["x", "x"], "y")], vec![], &["y"]);
        let err = Plan::compile(&m, &[]).unwrap_err().to_string();
        assert!(
            err.contains("node 'y' (MatMul): a product of two computed values"),
            "{err}"
        );
        let shape = pb::TensorProto {
            name: "s".into(),
            dims: vec![1],
            data_type: 7,
            int64_data: vec![-1],
            ..Default::default()
        };
        let m = model(vec![node("Reshape", &["x", "s"], "y")], vec![shape], &["y"]);
        let err = Plan::compile(&m, &[]).unwrap_err().to_string();
        assert!(err.contains("a reshape of [rows, 2] to [-1]"), "{err}");
    }
}
