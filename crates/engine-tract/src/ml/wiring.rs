//! What our operators share on the tract side: what their builders return, the one typed op
//! they are all wired as (tract asks the same things of each, and only the computation
//! differs), and the facts of a classifier's outputs, which the tree ensembles and the other
//! classifiers state alike.

use std::fmt;

use tract_onnx::tract_hir::internal::*;

use super::common::Labels;

/// What an `OpBuilder` of ours returns to tract's register.
pub type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// What one operator computes, once its input facts are known.
pub trait Compute: fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// The typed op. Two ops are the same only when they share the computation: tract merges
/// equal ops with equal inputs, and ours hold attributes it cannot compare.
pub struct MlOp<C: ?Sized>(pub Arc<C>);

impl<C: ?Sized> Clone for MlOp<C> {
    fn clone(&self) -> Self {
        MlOp(self.0.clone())
    }
}

impl<C: Compute + ?Sized> fmt::Debug for MlOp<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<C: ?Sized> PartialEq for MlOp<C> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<C: ?Sized> Eq for MlOp<C> {}

impl<C: Compute + ?Sized> Op for MlOp<C> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl<C: Compute + ?Sized> EvalOp for MlOp<C> {
    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.0.eval(inputs)?))
    }

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl<C: Compute + ?Sized> TypedOp for MlOp<C> {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }
}

pub fn label_type(labels: &Labels) -> DatumType {
    match labels {
        Labels::Int(_) => DatumType::I64,
        Labels::Str(_) => DatumType::String,
    }
}

/// A classifier's outputs for `rows` rows: labels `[rows]` and scores `[rows, width]`.
pub fn classifier_facts(labels: &Labels, rows: TDim, width: usize) -> TVec<TypedFact> {
    tvec!(
        TypedFact::dt_shape(label_type(labels), [rows.clone()]),
        f32::fact([rows, width.to_dim()])
    )
}
