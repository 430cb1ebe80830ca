//! The tract side of our non-tree operators: each builder reads a node's attributes (ONNX's
//! defaults where the node leaves one out, as onnxruntime applies them), builds the pure
//! operator of `linear`, `svm`, `transform`, `lookup` or `text` (a refused model fails here, at
//! load) and wires it as one [`MlOp`]. A [`Kernel`] is what an operator needs of tract: type
//! rules for inference, output facts, and an evaluation from tensors to tensors.

use std::borrow::Cow;
use std::fmt;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{build_refusal, Reader};
use super::common::{Labels, PostTransform};
use super::linear::{LinearClassifier, LinearRegressor};
use super::lookup::{Duplicates, Encoder, Kind, Value, Values};
use super::svm::SvmRegressor;
use super::svm::{Kernel as SvmKernel, KernelKind, SvmClassifier, SvmClassifierAttributes};
use super::text::{Case, Pool, StringNormalizer, TfIdf, TfIdfAttributes, Tokenizer, Weighting};
use super::transform::{self, Imputer, Norm, OneHotEncoder, Scaler};
use super::wiring::{classifier_facts, label_type, Built, MlOp};

/// What one operator of ours needs of tract.
trait Kernel: fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn nboutputs(&self) -> usize {
        1
    }

    /// Inference rules: what the solver can deduce of the outputs (types, ranks, the first
    /// dimension), and the input types this operator refuses at load.
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// The typed op wraps the kernel itself, so what it computes is the kernel's. (`Compute` is
/// named by path: in scope, its methods and the kernel's of the same names would be ambiguous
/// on `dyn Kernel`.)
impl super::wiring::Compute for dyn Kernel {
    fn name(&self) -> &'static str {
        Kernel::name(self)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Kernel::output_facts(self, inputs)
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Kernel::eval(self, inputs)
    }
}

/// The inference-time op: rules from the kernel, then one [`MlOp`] wired in its place.
#[derive(Clone, Debug)]
struct Ml(Arc<dyn Kernel>);

impl Expansion for Ml {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.nboutputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, self.0.nboutputs())?;
        self.0.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MlOp(self.0.clone()), inputs)
    }
}

fn built(k: impl Kernel) -> Built {
    Ok((expand(Ml(Arc::new(k))), vec![]))
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const NUMBERS: [DatumType; 4] = [
    DatumType::F32,
    DatumType::F64,
    DatumType::I32,
    DatumType::I64,
];

/// Refuses, at load, an input type outside `allowed`.
fn input_types<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    op: &'static str,
    input: &'p TensorProxy,
    allowed: &'static [DatumType],
) -> InferenceResult {
    s.given(&input.datum_type, move |_, dt| {
        if !allowed.contains(&dt) {
            bail!("{op}: an input of type {dt:?}; onnxruntime takes {allowed:?}")
        }
        Ok(())
    })
}

/// One input, `[features]` or `[N, features]`, of a type in `allowed`: anything else is
/// refused at load.
fn one_input<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    op: &'static str,
    inputs: &'p [TensorProxy],
    allowed: &'static [DatumType],
) -> InferenceResult {
    check_input_arity(inputs, 1)?;
    input_types(s, op, &inputs[0], allowed)?;
    s.given(&inputs[0].rank, move |_, rank| {
        if !(1..=2).contains(&rank) {
            bail!("{op}: an input of rank {rank}; rank 1 to 2 is served")
        }
        Ok(())
    })
}

/// `output`'s first dimension is `input`'s rows: `N` of `[N, features]`, 1 of `[features]`
/// (onnxruntime's batch of one).
fn rows_rule<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    input: &'p TensorProxy,
    output: &'p TensorProxy,
) -> InferenceResult {
    s.given(&input.rank, move |s, rank| {
        if rank == 2 {
            s.equals(&output.shape[0], &input.shape[0])?;
        } else {
            s.equals(&output.shape[0], 1.to_dim())?;
        }
        Ok(())
    })
}

/// `[N, features]` → `N`; `[features]` → 1 (onnxruntime's batch of one).
fn rows_dim(fact: &TypedFact) -> TDim {
    if fact.rank() >= 2 {
        fact.shape[0].clone()
    } else {
        1.to_dim()
    }
}

/// The number of columns a kernel expects, checked at load when the input's last dimension
/// is known.
fn check_width(op: &str, fact: &TypedFact, expected: usize) -> TractResult<()> {
    if let Some(d) = fact.shape.last().and_then(|d| d.as_i64()) {
        if d as usize != expected {
            bail!("{op}: the input has {d} columns, the operator's attributes are for {expected}")
        }
    }
    Ok(())
}

/// `(rows, columns)` of an input of rank 1 or 2, as onnxruntime reads it.
fn rows_cols(op: &str, t: &Tensor) -> TractResult<(usize, usize)> {
    match *t.shape() {
        [c] => Ok((1, c)),
        [r, c] => Ok((r, c)),
        ref other => bail!("{op}: an input of shape {other:?}; [N, features] is served"),
    }
}

/// onnxruntime's `stride`: the second dimension, or the only one.
fn stride(op: &str, t: &Tensor) -> TractResult<usize> {
    rows_cols(op, t).map(|(_, c)| c)
}

/// The input as `f32`, cast as onnxruntime casts (double rounded, integers converted).
fn floats<'t>(op: &str, t: &'t Tensor) -> TractResult<Cow<'t, [f32]>> {
    let ram = t.try_as_plain_ram()?;
    Ok(match t.datum_type() {
        DatumType::F32 => Cow::Borrowed(ram.as_slice::<f32>()?),
        DatumType::F64 => ram.as_slice::<f64>()?.iter().map(|&v| v as f32).collect(),
        DatumType::I32 => ram.as_slice::<i32>()?.iter().map(|&v| v as f32).collect(),
        DatumType::I64 => ram.as_slice::<i64>()?.iter().map(|&v| v as f32).collect(),
        dt => bail!("{op}: an input of type {dt:?}"),
    })
}

fn slice<T: Datum>(t: &Tensor) -> TractResult<&[T]> {
    t.try_as_plain_ram()?.as_slice::<T>()
}

fn tensor<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?
        .into_tensor()
        .into_tvalue())
}

fn labels_tensor(labels: &Labels, picks: &[usize], shape: &[usize]) -> TractResult<TValue> {
    match labels {
        Labels::Int(v) => tensor(shape, picks.iter().map(|&p| v[p]).collect()),
        Labels::Str(v) => tensor(shape, picks.iter().map(|&p| v[p].clone()).collect()),
    }
}

fn post_transform(r: &Reader) -> TractResult<PostTransform> {
    Ok(r.post_transform()?.unwrap_or(PostTransform::None))
}

/// The class labels of the classifiers and `ZipMap`, where an empty list counts as unset.
fn class_labels(r: &Reader, ints_name: &'static str) -> TractResult<Labels> {
    r.class_labels(ints_name, true)
}

/// An output that is the input with one more axis of `extra` after its own (one column per
/// category, one token per string).
fn one_more_axis_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    extra: TDim,
) -> InferenceResult {
    s.equals(inputs[0].rank.bex() + 1, outputs[0].rank.bex())?;
    s.given(&inputs[0].shape, move |s, shape| {
        let mut out = shape.to_vec();
        out.push(extra.clone());
        s.equals(&outputs[0].shape, ShapeFactoid::from(out))
    })
}

fn one_more_axis_fact(dt: DatumType, input: &TypedFact, extra: TDim) -> TypedFact {
    let mut shape: TVec<TDim> = input.shape.iter().cloned().collect();
    shape.push(extra);
    TypedFact::dt_shape(dt, shape)
}

fn one_more_axis(shape: &[usize], extra: usize) -> Vec<usize> {
    let mut shape = shape.to_vec();
    shape.push(extra);
    shape
}

// ------------------------------------------------------------------------------------------
// Classifiers and regressors
// ------------------------------------------------------------------------------------------

/// The rows of `x`, refused where its columns are not the `features` the model was fitted on
/// (`fitted` is how the error names the model's side: "the coefficients are for").
fn fitted_rows(op: &str, fitted: &str, features: usize, x: &Tensor) -> TractResult<usize> {
    let (rows, cols) = rows_cols(op, x)?;
    if cols != features {
        bail!("{op}: the input has {cols} columns, {fitted} {features}")
    }
    Ok(rows)
}

/// A classifier of rows of features, as the linear and SVM classifiers are: one kernel serves
/// both, each naming only what its column-count error says it was fitted on.
trait RowClassifier: fmt::Debug + Send + Sync + 'static {
    const OP: &'static str;
    /// How a column-count error names the model's side: "the coefficients are for".
    const FITTED: &'static str;
    fn labels(&self) -> &Labels;
    fn width(&self) -> usize;
    fn features(&self) -> usize;
    fn run(&self, x: &[f32], scores: &mut [f32], picks: &mut [usize]);
}

impl RowClassifier for LinearClassifier {
    const OP: &'static str = "LinearClassifier";
    const FITTED: &'static str = "the coefficients are for";
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn width(&self) -> usize {
        LinearClassifier::width(self)
    }
    fn features(&self) -> usize {
        LinearClassifier::features(self)
    }
    fn run(&self, x: &[f32], scores: &mut [f32], picks: &mut [usize]) {
        LinearClassifier::run(self, x, scores, picks)
    }
}

impl RowClassifier for SvmClassifier {
    const OP: &'static str = "SVMClassifier";
    const FITTED: &'static str = "the support vectors have";
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn width(&self) -> usize {
        SvmClassifier::width(self)
    }
    fn features(&self) -> usize {
        SvmClassifier::features(self)
    }
    fn run(&self, x: &[f32], scores: &mut [f32], picks: &mut [usize]) {
        SvmClassifier::run(self, x, scores, picks)
    }
}

/// Labels `[N]` and scores `[N, width]` from numbers of rank 1 or 2.
#[derive(Debug)]
struct ClassifierKernel<C>(C);

impl<C: RowClassifier> Kernel for ClassifierKernel<C> {
    fn name(&self) -> &'static str {
        C::OP
    }

    fn nboutputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        one_input(s, C::OP, inputs, &NUMBERS)?;
        s.equals(&outputs[0].datum_type, label_type(self.0.labels()))?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[1].shape[1], self.0.width().to_dim())?;
        s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
        rows_rule(s, &inputs[0], &outputs[0])
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        check_width(C::OP, inputs[0], self.0.features())?;
        let rows = rows_dim(inputs[0]);
        Ok(classifier_facts(self.0.labels(), rows, self.0.width()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let rows = fitted_rows(C::OP, C::FITTED, self.0.features(), x)?;
        let x = floats(C::OP, x)?;
        let mut scores = vec![0f32; rows * self.0.width()];
        let mut picks = vec![0usize; rows];
        self.0.run(&x, &mut scores, &mut picks);
        Ok(tvec!(
            labels_tensor(self.0.labels(), &picks, &[rows])?,
            tensor(&[rows, self.0.width()], scores)?
        ))
    }
}

/// A regressor of rows of features, as the linear and SVM regressors are: one kernel serves
/// both, each naming only what its column-count error says it was fitted on.
trait RowRegressor: fmt::Debug + Send + Sync + 'static {
    const OP: &'static str;
    /// How a column-count error names the model's side: "the coefficients are for".
    const FITTED: &'static str;
    fn targets(&self) -> usize;
    fn features(&self) -> usize;
    fn run(&self, x: &[f32], out: &mut [f32]);
}

impl RowRegressor for LinearRegressor {
    const OP: &'static str = "LinearRegressor";
    const FITTED: &'static str = "the coefficients are for";
    fn targets(&self) -> usize {
        LinearRegressor::targets(self)
    }
    fn features(&self) -> usize {
        LinearRegressor::features(self)
    }
    fn run(&self, x: &[f32], out: &mut [f32]) {
        LinearRegressor::run(self, x, out)
    }
}

impl RowRegressor for SvmRegressor {
    const OP: &'static str = "SVMRegressor";
    const FITTED: &'static str = "the model has";
    fn targets(&self) -> usize {
        1
    }
    fn features(&self) -> usize {
        SvmRegressor::features(self)
    }
    fn run(&self, x: &[f32], out: &mut [f32]) {
        SvmRegressor::run(self, x, out)
    }
}

/// `[N, targets]` from a float input of rank 1 or 2 (onnxruntime's `LinearRegressor` and
/// `SVMRegressor` take float only).
#[derive(Debug)]
struct RegressorKernel<R>(R);

impl<R: RowRegressor> Kernel for RegressorKernel<R> {
    fn name(&self) -> &'static str {
        R::OP
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        one_input(s, R::OP, inputs, &[DatumType::F32])?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.0.targets().to_dim())?;
        rows_rule(s, &inputs[0], &outputs[0])
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        check_width(R::OP, inputs[0], self.0.features())?;
        let rows = rows_dim(inputs[0]);
        Ok(tvec!(f32::fact([rows, self.0.targets().to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let rows = fitted_rows(R::OP, R::FITTED, self.0.features(), x)?;
        let mut out = vec![0f32; rows * self.0.targets()];
        self.0.run(slice::<f32>(x)?, &mut out);
        Ok(tvec!(tensor(&[rows, self.0.targets()], out)?))
    }
}

pub fn linear_classifier(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "LinearClassifier",
        ctx,
        node,
        &[&[
            "coefficients",
            "intercepts",
            "multi_class",
            "post_transform",
            "classlabels_ints",
            "classlabels_strings",
        ]],
    )?;
    let coefficients = r
        .required("coefficients", r.floats("coefficients")?)?
        .to_vec();
    let c = LinearClassifier::build(
        coefficients,
        r.floats_or_empty("intercepts")?,
        class_labels(&r, "classlabels_ints")?,
        post_transform(&r)?,
    )
    .map_err(|e| build_refusal(r.op, e))?;
    built(ClassifierKernel(c))
}

pub fn linear_regressor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let known = ["coefficients", "intercepts", "targets", "post_transform"];
    let r = Reader::checked("LinearRegressor", ctx, node, &[&known])?;
    let coefficients = r
        .required("coefficients", r.floats("coefficients")?)?
        .to_vec();
    let reg = LinearRegressor::build(
        coefficients,
        r.floats_or_empty("intercepts")?,
        r.int("targets")?.unwrap_or(1),
        post_transform(&r)?,
    )
    .map_err(|e| build_refusal(r.op, e))?;
    built(RegressorKernel(reg))
}

fn svm_kernel(r: &Reader) -> TractResult<SvmKernel> {
    let kind = match r.string("kernel_type")? {
        None => KernelKind::Linear,
        Some(k) => KernelKind::parse(&k).map_err(|e| r.invalid("kernel_type", e))?,
    };
    // onnxruntime refuses the model without kernel_params, even in liblinear mode.
    let params = r.required("kernel_params", r.floats("kernel_params")?)?;
    SvmKernel::new(kind, params).map_err(|e| build_refusal(r.op, e))
}

pub fn svm_classifier(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "SVMClassifier",
        ctx,
        node,
        &[&[
            "kernel_type",
            "kernel_params",
            "vectors_per_class",
            "support_vectors",
            "coefficients",
            "rho",
            "prob_a",
            "prob_b",
            "classlabels_ints",
            "classlabels_strings",
            "post_transform",
        ]],
    )?;
    let c = SvmClassifier::build(SvmClassifierAttributes {
        kernel: svm_kernel(&r)?,
        vectors_per_class: r.ints_or_empty("vectors_per_class")?,
        support_vectors: r.floats_or_empty("support_vectors")?,
        coefficients: r
            .required("coefficients", r.floats("coefficients")?)?
            .to_vec(),
        rho: r.required("rho", r.floats("rho")?)?.to_vec(),
        prob_a: r.floats_or_empty("prob_a")?,
        prob_b: r.floats_or_empty("prob_b")?,
        labels: class_labels(&r, "classlabels_ints")?,
        post: post_transform(&r)?,
    })
    .map_err(|e| build_refusal(r.op, e))?;
    built(ClassifierKernel(c))
}

pub fn svm_regressor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "SVMRegressor",
        ctx,
        node,
        &[&[
            "kernel_type",
            "kernel_params",
            "n_supports",
            "support_vectors",
            "coefficients",
            "rho",
            "one_class",
            "post_transform",
        ]],
    )?;
    // onnxruntime reads post_transform and never applies it; so do we.
    post_transform(&r)?;
    let reg = SvmRegressor::build(
        svm_kernel(&r)?,
        r.int("n_supports")?.unwrap_or(0),
        r.floats_or_empty("support_vectors")?,
        r.required("coefficients", r.floats("coefficients")?)?
            .to_vec(),
        r.required("rho", r.floats("rho")?)?,
        r.int("one_class")?.unwrap_or(0) != 0,
    )
    .map_err(|e| build_refusal(r.op, e))?;
    built(RegressorKernel(reg))
}

// ------------------------------------------------------------------------------------------
// Feature transforms
// ------------------------------------------------------------------------------------------

/// A transform whose output has its input's shape: `Scaler`, `Imputer`, `Normalizer`,
/// `Binarizer`, `StringNormalizer`. One kernel holds the rules and the facts, so each
/// transform says only which inputs it takes and what it computes.
trait RowTransform: fmt::Debug + Send + Sync + 'static {
    const OP: &'static str;
    /// The output's type, where it is not the input's.
    const OUT: Option<DatumType>;
    /// The input types onnxruntime implements.
    fn allowed(&self) -> &'static [DatumType];
    /// The number of columns the attributes are for, checked at load; `None` fits any.
    fn columns(&self) -> Option<usize> {
        None
    }
    /// The output, of `x`'s shape.
    fn apply(&self, x: &Tensor) -> TractResult<TValue>;
}

#[derive(Debug)]
struct TransformKernel<T>(T);

impl<T: RowTransform> Kernel for TransformKernel<T> {
    fn name(&self) -> &'static str {
        T::OP
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        one_input(s, T::OP, inputs, self.0.allowed())?;
        match T::OUT {
            Some(dt) => s.equals(&outputs[0].datum_type, dt)?,
            None => s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?,
        }
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        if let Some(columns) = self.0.columns() {
            check_width(T::OP, inputs[0], columns)?;
        }
        Ok(tvec!(match T::OUT {
            Some(dt) => TypedFact::dt_shape(dt, inputs[0].shape.clone()),
            None => inputs[0].without_value(),
        }))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(self.0.apply(&inputs[0])?))
    }
}

pub fn scaler(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked("Scaler", ctx, node, &[&["scale", "offset"]])?;
    let s = Scaler::build(r.floats_or_empty("scale")?, r.floats_or_empty("offset")?)
        .map_err(|e| build_refusal(r.op, e))?;
    built(TransformKernel(s))
}

impl RowTransform for Scaler {
    const OP: &'static str = "Scaler";
    const OUT: Option<DatumType> = Some(DatumType::F32);

    fn allowed(&self) -> &'static [DatumType] {
        &NUMBERS
    }

    /// One scale and offset fits any number of columns.
    fn columns(&self) -> Option<usize> {
        (self.width() != 1).then_some(self.width())
    }

    fn apply(&self, x: &Tensor) -> TractResult<TValue> {
        let stride = stride(Self::OP, x)?;
        let mut out = vec![0f32; x.len()];
        let done = if x.datum_type() == DatumType::F64 {
            self.run_f64(slice::<f64>(x)?, stride, &mut out)
        } else {
            self.run_f32(&floats(Self::OP, x)?, stride, &mut out)
        };
        done.map_err(|e| format_err!("{e}"))?;
        tensor(x.shape(), out)
    }
}

pub fn imputer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "Imputer",
        ctx,
        node,
        &[&[
            "imputed_value_floats",
            "imputed_value_int64s",
            "replaced_value_float",
            "replaced_value_int64",
        ]],
    )?;
    let floats = r.floats_or_empty("imputed_value_floats")?;
    let ints = r.ints_or_empty("imputed_value_int64s")?;
    let imputer = match (floats.is_empty(), ints.is_empty()) {
        (false, true) => Imputer::Float {
            imputed: floats,
            replaced: r.float("replaced_value_float")?.unwrap_or(0.0),
        },
        (true, false) => Imputer::Int {
            imputed: ints,
            replaced: r.int("replaced_value_int64")?.unwrap_or(0),
        },
        _ => {
            return Err(r.invalid(
                "imputed_value_floats",
                "exactly one of imputed_value_floats and imputed_value_int64s must be set",
            ))
        }
    };
    built(TransformKernel(imputer))
}

impl RowTransform for Imputer {
    const OP: &'static str = "Imputer";
    const OUT: Option<DatumType> = None;

    /// onnxruntime imputes a float input with float values and an int64 one with int64s.
    fn allowed(&self) -> &'static [DatumType] {
        match self {
            Imputer::Float { .. } => &[DatumType::F32],
            Imputer::Int { .. } => &[DatumType::I64],
        }
    }

    fn apply(&self, x: &Tensor) -> TractResult<TValue> {
        let stride = stride(Self::OP, x)?;
        match self {
            Imputer::Float { imputed, replaced } => {
                let mut out = vec![0f32; x.len()];
                Imputer::run_f32(imputed, *replaced, slice::<f32>(x)?, stride, &mut out);
                tensor(x.shape(), out)
            }
            Imputer::Int { imputed, replaced } => {
                let mut out = vec![0i64; x.len()];
                Imputer::run_i64(imputed, *replaced, slice::<i64>(x)?, stride, &mut out);
                tensor(x.shape(), out)
            }
        }
    }
}

#[derive(Debug)]
struct OneHotKernel(OneHotEncoder);

pub fn one_hot_encoder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let known = ["cats_int64s", "cats_strings", "zeros"];
    let r = Reader::checked("OneHotEncoder", ctx, node, &[&known])?;
    let e = OneHotEncoder::build(
        r.ints_or_empty("cats_int64s")?,
        r.strings("cats_strings")?.unwrap_or_default(),
        r.int("zeros")?.unwrap_or(1) != 0,
    )
    .map_err(|e| build_refusal(r.op, e))?;
    built(OneHotKernel(e))
}

impl Kernel for OneHotKernel {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        const TYPES: [DatumType; 4] = [
            DatumType::String,
            DatumType::I64,
            DatumType::F32,
            DatumType::F64,
        ];
        one_input(s, self.name(), inputs, &TYPES)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        one_more_axis_rules(s, inputs, outputs, self.0.count().to_dim())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let count = self.0.count().to_dim();
        Ok(tvec!(one_more_axis_fact(DatumType::F32, inputs[0], count)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let mut out = vec![0f32; x.len() * self.0.count()];
        let done = match x.datum_type() {
            DatumType::String => self.0.run_strings(slice::<String>(x)?, &mut out),
            DatumType::I64 => self.0.run_i64(slice::<i64>(x)?, &mut out),
            DatumType::F32 => self
                .0
                .run_numbers(slice::<f32>(x)?.iter().map(|&v| f64::from(v)), &mut out),
            DatumType::F64 => self
                .0
                .run_numbers(slice::<f64>(x)?.iter().copied(), &mut out),
            dt => bail!("OneHotEncoder: an input of type {dt:?}"),
        };
        done.map_err(|e| format_err!("{e}"))?;
        Ok(tvec!(tensor(
            &one_more_axis(x.shape(), self.0.count()),
            out
        )?))
    }
}

pub fn normalizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked("Normalizer", ctx, node, &[&["norm"]])?;
    let norm = Norm::parse(&r.string("norm")?.unwrap_or_else(|| "MAX".into()))
        .map_err(|e| r.invalid("norm", e))?;
    built(TransformKernel(norm))
}

impl RowTransform for Norm {
    const OP: &'static str = "Normalizer";
    const OUT: Option<DatumType> = Some(DatumType::F32);

    fn allowed(&self) -> &'static [DatumType] {
        &NUMBERS
    }

    fn apply(&self, x: &Tensor) -> TractResult<TValue> {
        let stride = stride(Self::OP, x)?;
        let mut out = vec![0f32; x.len()];
        match x.datum_type() {
            DatumType::F32 => transform::normalize(*self, slice::<f32>(x)?, stride, &mut out),
            DatumType::F64 => transform::normalize(*self, slice::<f64>(x)?, stride, &mut out),
            DatumType::I32 => transform::normalize(*self, slice::<i32>(x)?, stride, &mut out),
            DatumType::I64 => transform::normalize(*self, slice::<i64>(x)?, stride, &mut out),
            dt => bail!("Normalizer: an input of type {dt:?}"),
        }
        tensor(x.shape(), out)
    }
}

/// `Binarizer`, of its threshold.
#[derive(Debug)]
struct Binarizer(f32);

pub fn binarizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked("Binarizer", ctx, node, &[&["threshold"]])?;
    built(TransformKernel(Binarizer(
        r.float("threshold")?.unwrap_or(0.0),
    )))
}

impl RowTransform for Binarizer {
    const OP: &'static str = "Binarizer";
    const OUT: Option<DatumType> = None;

    /// onnxruntime implements float only.
    fn allowed(&self) -> &'static [DatumType] {
        &[DatumType::F32]
    }

    fn apply(&self, x: &Tensor) -> TractResult<TValue> {
        let mut out = vec![0f32; x.len()];
        transform::binarize(self.0, slice::<f32>(x)?, &mut out).map_err(|e| format_err!("{e}"))?;
        tensor(x.shape(), out)
    }
}

#[derive(Debug)]
struct ArrayFeatureExtractorKernel;

pub fn array_feature_extractor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    Reader::checked("ArrayFeatureExtractor", ctx, node, &[])?;
    built(ArrayFeatureExtractorKernel)
}

impl Kernel for ArrayFeatureExtractorKernel {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        const TYPES: [DatumType; 5] = [
            DatumType::F32,
            DatumType::F64,
            DatumType::I32,
            DatumType::I64,
            DatumType::String,
        ];
        input_types(s, self.name(), &inputs[0], &TYPES)?;
        s.equals(&inputs[1].datum_type, DatumType::I64)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, y| {
            s.equals(
                &outputs[0].shape,
                ShapeFactoid::from(extracted_shape(&x, &y)),
            )
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x: Vec<TDim> = inputs[0].shape.iter().cloned().collect();
        let y: Vec<TDim> = inputs[1].shape.iter().cloned().collect();
        Ok(tvec!(TypedFact::dt_shape(
            inputs[0].datum_type,
            extracted_shape(&x, &y)
        )))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, y) = (&inputs[0], &inputs[1]);
        let Some(&stride) = x.shape().last() else {
            bail!("ArrayFeatureExtractor: a scalar input")
        };
        let indices = slice::<i64>(y)?;
        let mut shape = if x.rank() == 1 {
            vec![1, indices.len()]
        } else {
            x.shape().to_vec()
        };
        *shape.last_mut().expect("rank ≥ 1") = indices.len();
        fn go<T: Datum + Clone>(
            x: &Tensor,
            stride: usize,
            indices: &[i64],
            shape: &[usize],
        ) -> TractResult<TValue> {
            let mut out = Vec::new();
            transform::extract(slice::<T>(x)?, stride, indices, &mut out)
                .map_err(|e| format_err!("{e}"))?;
            tensor(shape, out)
        }
        let out = match x.datum_type() {
            DatumType::F32 => go::<f32>(x, stride, indices, &shape)?,
            DatumType::F64 => go::<f64>(x, stride, indices, &shape)?,
            DatumType::I32 => go::<i32>(x, stride, indices, &shape)?,
            DatumType::I64 => go::<i64>(x, stride, indices, &shape)?,
            DatumType::String => go::<String>(x, stride, indices, &shape)?,
            dt => bail!("ArrayFeatureExtractor: an input of type {dt:?}"),
        };
        Ok(tvec!(out))
    }
}

/// onnxruntime's output shape: `X`'s with the last axis the number of indices; `[1, n]` for a
/// one-dimensional `X`.
fn extracted_shape(x: &[TDim], y: &[TDim]) -> Vec<TDim> {
    let n: TDim = y.iter().product();
    if x.len() <= 1 {
        return vec![1.to_dim(), n];
    }
    let mut shape = x.to_vec();
    *shape.last_mut().expect("rank ≥ 2") = n;
    shape
}

#[derive(Debug)]
struct FeatureVectorizerKernel(Vec<usize>);

pub fn feature_vectorizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked("FeatureVectorizer", ctx, node, &[&["inputdimensions"]])?;
    let dims = r
        .ints_or_empty("inputdimensions")?
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| r.invalid("inputdimensions", "holds a negative dimension"))?;
    if dims.len() != node.input.len() {
        return Err(r.invalid(
            "inputdimensions",
            format!("{} dimensions for {} inputs", dims.len(), node.input.len()),
        ));
    }
    built(FeatureVectorizerKernel(dims))
}

impl Kernel for FeatureVectorizerKernel {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.0.len())?;
        for input in inputs {
            input_types(s, self.name(), input, &NUMBERS)?;
        }
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        let total: usize = self.0.iter().sum();
        s.equals(&outputs[0].shape[1], total.to_dim())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let total: usize = self.0.iter().sum();
        Ok(tvec!(f32::fact([rows_dim(inputs[0]), total.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = if inputs[0].rank() == 1 {
            1
        } else {
            inputs[0].shape()[0]
        };
        let mut parts = Vec::with_capacity(inputs.len());
        for x in &inputs {
            let width = if x.rank() == 1 {
                x.shape()[0]
            } else {
                x.shape()[1..].iter().product()
            };
            parts.push((floats(self.name(), x)?.into_owned(), width));
        }
        let total: usize = self.0.iter().sum();
        let mut out = vec![0f32; rows * total];
        transform::vectorize(&self.0, &parts, rows, &mut out).map_err(|e| format_err!("{e}"))?;
        Ok(tvec!(tensor(&[rows, total], out)?))
    }
}

// ------------------------------------------------------------------------------------------
// Maps: LabelEncoder, CategoryMapper, ZipMap
// ------------------------------------------------------------------------------------------

fn kind_type(kind: Kind) -> DatumType {
    match kind {
        Kind::Str => DatumType::String,
        Kind::Int => DatumType::I64,
        Kind::Float => DatumType::F32,
    }
}

/// Maps every element through one of `encoders`, the one whose key type is the input's.
#[derive(Debug)]
struct MapKernel {
    op: &'static str,
    encoders: Vec<Encoder>,
}

impl MapKernel {
    fn encoder(&self, dt: DatumType) -> Option<&Encoder> {
        self.encoders.iter().find(|e| kind_type(e.key_kind()) == dt)
    }
}

pub fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader {
        op: "LabelEncoder",
        node,
        ctx,
    };
    let opset = r.ml_opset();
    let default_string = || -> TractResult<String> {
        Ok(r.string("default_string")?
            .unwrap_or_else(|| "_Unused".into()))
    };
    let default_int = r.int("default_int64")?.unwrap_or(-1);
    if opset < 2 {
        r.check_known(&[&["classes_strings", "default_int64", "default_string"]])?;
        let classes = r.strings("classes_strings")?.unwrap_or_default();
        let indexes: Vec<i64> = (0..classes.len() as i64).collect();
        // onnxruntime's opset-1 maps keep the last duplicate.
        let to_int = Encoder::new(
            Values::Str(classes.clone()),
            Values::Int(indexes.clone()),
            Value::Int(default_int),
            Duplicates::Last,
            false,
        );
        let to_str = Encoder::new(
            Values::Int(indexes),
            Values::Str(classes),
            Value::Str(default_string()?),
            Duplicates::Last,
            false,
        );
        return built(MapKernel {
            op: r.op,
            encoders: vec![to_int, to_str],
        });
    }
    r.check_known(&[&[
        "keys_strings",
        "keys_int64s",
        "keys_floats",
        "values_strings",
        "values_int64s",
        "values_floats",
        "default_string",
        "default_int64",
        "default_float",
    ]])?;
    let one_of = |prefix: &'static str| -> TractResult<Values> {
        let names = ["strings", "int64s", "floats"].map(|t| format!("{prefix}_{t}"));
        let mut found = Vec::new();
        if let Some(v) = r.strings(&names[0])? {
            found.push(Values::Str(v));
        }
        if let Some(v) = r.ints(&names[1])? {
            found.push(Values::Int(v.to_vec()));
        }
        if let Some(v) = r.floats(&names[2])? {
            found.push(Values::Float(v.to_vec()));
        }
        match found.len() {
            1 => Ok(found.pop().expect("one")),
            0 => Err(r.invalid(&names[0], format!("none of {prefix}_* is set"))),
            _ => Err(r.invalid(&names[0], format!("more than one of {prefix}_* is set"))),
        }
    };
    let keys = one_of("keys")?;
    let values = one_of("values")?;
    if keys.len() != values.len() {
        return Err(r.invalid(
            "values_strings",
            format!("{} keys and {} values", keys.len(), values.len()),
        ));
    }
    let default = match values.kind() {
        Kind::Str => Value::Str(default_string()?),
        Kind::Int => Value::Int(default_int),
        Kind::Float => Value::Float(r.float("default_float")?.unwrap_or(-0.0)),
    };
    let e = Encoder::new(keys, values, default, Duplicates::First, opset >= 4);
    built(MapKernel {
        op: r.op,
        encoders: vec![e],
    })
}

pub fn category_mapper(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "CategoryMapper",
        ctx,
        node,
        &[&[
            "cats_int64s",
            "cats_strings",
            "default_int64",
            "default_string",
        ]],
    )?;
    let ints = r.ints_or_empty("cats_int64s")?;
    let strings = r.strings("cats_strings")?.unwrap_or_default();
    if ints.len() != strings.len() {
        return Err(r.invalid(
            "cats_strings",
            format!("{} strings for {} int64s", strings.len(), ints.len()),
        ));
    }
    let to_int = Encoder::new(
        Values::Str(strings.clone()),
        Values::Int(ints.clone()),
        Value::Int(r.int("default_int64")?.unwrap_or(-1)),
        Duplicates::Last,
        false,
    );
    let to_str = Encoder::new(
        Values::Int(ints),
        Values::Str(strings),
        Value::Str(
            r.string("default_string")?
                .unwrap_or_else(|| "_Unused".into()),
        ),
        Duplicates::Last,
        false,
    );
    built(MapKernel {
        op: r.op,
        encoders: vec![to_int, to_str],
    })
}

impl Kernel for MapKernel {
    fn name(&self) -> &'static str {
        self.op
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        s.given(&inputs[0].datum_type, move |s, dt| {
            let Some(e) = self.encoder(dt) else {
                bail!(
                    "{}: an input of type {dt:?}, which no key list of the node is",
                    self.op
                )
            };
            s.equals(&outputs[0].datum_type, kind_type(e.values.kind()))
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = inputs[0].datum_type;
        let Some(e) = self.encoder(dt) else {
            bail!("{}: an input of type {dt:?}", self.op)
        };
        Ok(tvec!(TypedFact::dt_shape(
            kind_type(e.values.kind()),
            inputs[0].shape.clone()
        )))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let Some(e) = self.encoder(x.datum_type()) else {
            bail!("{}: an input of type {:?}", self.op, x.datum_type())
        };
        let hits: Vec<Option<usize>> = match e.key_kind() {
            Kind::Str => slice::<String>(x)?
                .iter()
                .map(|k| e.lookup_str(k))
                .collect(),
            Kind::Int => slice::<i64>(x)?.iter().map(|&k| e.lookup_int(k)).collect(),
            Kind::Float => slice::<f32>(x)?
                .iter()
                .map(|&k| e.lookup_float(k))
                .collect(),
        };
        let out = match e.values.kind() {
            Kind::Str => tensor(x.shape(), e.strings(hits.into_iter()))?,
            Kind::Int => tensor(x.shape(), e.ints(hits.into_iter()))?,
            Kind::Float => tensor(x.shape(), e.floats(hits.into_iter()))?,
        };
        Ok(tvec!(out))
    }
}

/// `ZipMap`: onnxruntime answers a sequence of maps, one per row, from class to probability;
/// this engine answers the `[N, classes]` probabilities themselves, the classes being the
/// output's (the engine reads them from the node for the signature).
#[derive(Debug)]
struct ZipMapKernel(usize);

pub fn zip_map(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "ZipMap",
        ctx,
        node,
        &[&["classlabels_int64s", "classlabels_strings"]],
    )?;
    let labels = class_labels(&r, "classlabels_int64s")?;
    built(ZipMapKernel(labels.len()))
}

impl Kernel for ZipMapKernel {
    fn name(&self) -> &'static str {
        "ZipMap"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&inputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[0].shape[1], self.0.to_dim())?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        check_width(self.name(), inputs[0], self.0)?;
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(inputs)
    }
}

// ------------------------------------------------------------------------------------------
// Text
// ------------------------------------------------------------------------------------------

pub fn string_normalizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    // The locale picks the C library's case tables in onnxruntime (which fails to load the
    // model where the locale is not installed); the case mapping here is Unicode's.
    let known = [
        "case_change_action",
        "is_case_sensitive",
        "locale",
        "stopwords",
    ];
    let r = Reader::checked("StringNormalizer", ctx, node, &[&known])?;
    let case = Case::parse(
        &r.string("case_change_action")?
            .unwrap_or_else(|| "NONE".into()),
    )
    .map_err(|e| r.invalid("case_change_action", e))?;
    let n = StringNormalizer::build(
        case,
        r.int("is_case_sensitive")?.unwrap_or(0) != 0,
        r.strings("stopwords")?.unwrap_or_default(),
    )
    .map_err(|e| build_refusal(r.op, e))?;
    built(TransformKernel(n))
}

impl RowTransform for StringNormalizer {
    const OP: &'static str = "StringNormalizer";
    const OUT: Option<DatumType> = None;

    fn allowed(&self) -> &'static [DatumType] {
        &[DatumType::String]
    }

    fn apply(&self, x: &Tensor) -> TractResult<TValue> {
        if x.rank() == 2 && x.shape()[0] != 1 {
            bail!(
                "StringNormalizer: an input of shape {:?}; onnxruntime takes [C] or [1, C]",
                x.shape()
            )
        }
        let out = self
            .run(slice::<String>(x)?)
            .map_err(|e| format_err!("{e}"))?;
        tensor(x.shape(), out)
    }
}

#[derive(Debug)]
struct TokenizerKernel {
    tokenizer: Tokenizer,
    /// The number of tokens per string, known only when the batch is.
    tokens: Symbol,
}

pub fn tokenizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "Tokenizer",
        ctx,
        node,
        &[&["mark", "pad_value", "mincharnum", "separators", "tokenexp"]],
    )?;
    let t = Tokenizer::build(
        r.required("mark", r.int("mark")?)? != 0,
        r.required("pad_value", r.string("pad_value")?)?,
        r.required("mincharnum", r.int("mincharnum")?)?,
        r.strings("separators")?,
        r.string("tokenexp")?,
    )
    .map_err(|e| build_refusal(r.op, e))?;
    let tokens = ctx.template.symbols.new_with_prefix("tokens");
    built(TokenizerKernel {
        tokenizer: t,
        tokens,
    })
}

impl Kernel for TokenizerKernel {
    fn name(&self) -> &'static str {
        "Tokenizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        one_input(s, self.name(), inputs, &[DatumType::String])?;
        s.equals(&outputs[0].datum_type, DatumType::String)?;
        one_more_axis_rules(s, inputs, outputs, self.tokens.to_dim())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let tokens = self.tokens.to_dim();
        Ok(tvec!(one_more_axis_fact(
            DatumType::String,
            inputs[0],
            tokens
        )))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (out, width) = self.tokenizer.run(slice::<String>(x)?);
        Ok(tvec!(tensor(&one_more_axis(x.shape(), width), out)?))
    }
}

#[derive(Debug)]
struct TfIdfKernel(TfIdf);

pub fn tfidf_vectorizer(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let r = Reader::checked(
        "TfIdfVectorizer",
        ctx,
        node,
        &[&[
            "mode",
            "min_gram_length",
            "max_gram_length",
            "max_skip_count",
            "ngram_counts",
            "ngram_indexes",
            "weights",
            "pool_strings",
            "pool_int64s",
        ]],
    )?;
    let mode = Weighting::parse(&r.required("mode", r.string("mode")?)?)
        .map_err(|e| r.invalid("mode", e))?;
    let pool = match (r.strings("pool_strings")?, r.ints("pool_int64s")?) {
        (Some(s), _) => Pool::Str(s),
        (None, Some(i)) => Pool::Int(i.to_vec()),
        (None, None) => return Err(r.invalid("pool_strings", "no pool is set")),
    };
    let t = TfIdf::build(TfIdfAttributes {
        mode,
        min_gram_length: r.required("min_gram_length", r.int("min_gram_length")?)?,
        max_gram_length: r.required("max_gram_length", r.int("max_gram_length")?)?,
        max_skip_count: r.required("max_skip_count", r.int("max_skip_count")?)?,
        ngram_counts: r
            .required("ngram_counts", r.ints("ngram_counts")?)?
            .to_vec(),
        ngram_indexes: r
            .required("ngram_indexes", r.ints("ngram_indexes")?)?
            .to_vec(),
        weights: r.floats_or_empty("weights")?,
        pool,
    })
    .map_err(|e| build_refusal(r.op, e))?;
    built(TfIdfKernel(t))
}

impl Kernel for TfIdfKernel {
    fn name(&self) -> &'static str {
        "TfIdfVectorizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let allowed: &'static [DatumType] = if self.0.string_pool {
            &[DatumType::String]
        } else {
            &[DatumType::I32, DatumType::I64]
        };
        one_input(s, self.name(), inputs, allowed)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        let width = self.0.width();
        s.given(&inputs[0].rank, move |s, rank| {
            if rank == 2 {
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[0].shape[1], width.to_dim())?;
            } else {
                s.equals(&outputs[0].shape[0], width.to_dim())?;
            }
            Ok(())
        })
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let w = self.0.width().to_dim();
        Ok(tvec!(if inputs[0].rank() == 2 {
            f32::fact([inputs[0].shape[0].clone(), w])
        } else {
            f32::fact([w])
        }))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (rows, row_len, shape) = match *x.shape() {
            [c] => (1, c, vec![self.0.width()]),
            [b, c] => (b, c, vec![b, self.0.width()]),
            ref other => bail!("TfIdfVectorizer: an input of shape {other:?}"),
        };
        let mut out = vec![0f32; rows * self.0.width()];
        match x.datum_type() {
            DatumType::String => self.0.run_strings(slice::<String>(x)?, row_len, &mut out),
            DatumType::I64 => self
                .0
                .run_ints(slice::<i64>(x)?.iter().copied(), row_len, &mut out),
            DatumType::I32 => self.0.run_ints(
                slice::<i32>(x)?.iter().map(|&v| i64::from(v)),
                row_len,
                &mut out,
            ),
            dt => bail!("TfIdfVectorizer: an input of type {dt:?}"),
        }
        Ok(tvec!(tensor(&shape, out)?))
    }
}
