//! The tract side of our tree ensembles: reads a node's attributes (`FLOATS` or the opset-3
//! `*_as_tensor` form), builds the [`Ensemble`] at load, and wires one op of ours where tract's
//! own would have gone. Every attribute we do not implement, and every combination whose answer
//! we could not give as onnxruntime does, is a load error that names the operator and the
//! attribute; nothing here guesses at run time.

use std::borrow::Cow;
use std::fmt;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{build_refusal, Reader, ORT_HINT};
use super::trees::{Aggregate, Attributes, Ensemble, Head, Labels, Mode, Pick, Rows};
use super::wiring::{classifier_facts, label_type, Built, Compute, MlOp};

const CLASSIFIER: &str = "TreeEnsembleClassifier";
const REGRESSOR: &str = "TreeEnsembleRegressor";

/// Attributes that onnxruntime reads and ignores for inference.
const IGNORED: [&str; 2] = ["nodes_hitrates", "nodes_hitrates_as_tensor"];

const NODE_ATTRIBUTES: [&str; 10] = [
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_values",
    "nodes_values_as_tensor",
    "nodes_modes",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
    "post_transform",
];

const CLASSIFIER_ATTRIBUTES: [&str; 9] = [
    "class_treeids",
    "class_nodeids",
    "class_ids",
    "class_weights",
    "class_weights_as_tensor",
    "classlabels_int64s",
    "classlabels_strings",
    "base_values",
    "base_values_as_tensor",
];

const REGRESSOR_ATTRIBUTES: [&str; 9] = [
    "target_treeids",
    "target_nodeids",
    "target_ids",
    "target_weights",
    "target_weights_as_tensor",
    "n_targets",
    "aggregate_function",
    "base_values",
    "base_values_as_tensor",
];

/// The `OpBuilder` for `TreeEnsembleClassifier`.
pub fn tree_classifier(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let known: [&[&str]; 3] = [&NODE_ATTRIBUTES, &CLASSIFIER_ATTRIBUTES, &IGNORED];
    let reader = Reader::checked(CLASSIFIER, ctx, node, &known)?;
    let labels = reader.class_labels("classlabels_int64s", false)?;
    let attrs = reader.attributes("class")?;
    let head = Head::Classifier { labels };
    TreeEnsemble::inference_op(CLASSIFIER, attrs, head)
}

/// The `OpBuilder` for `TreeEnsembleRegressor`.
pub fn tree_regressor(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let known: [&[&str]; 3] = [&NODE_ATTRIBUTES, &REGRESSOR_ATTRIBUTES, &IGNORED];
    let reader = Reader::checked(REGRESSOR, ctx, node, &known)?;
    let n_targets = reader
        .int("n_targets")?
        .ok_or_else(|| reader.invalid("n_targets", "is not set"))?;
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| reader.invalid("n_targets", format!("{n_targets} is not positive")))?;
    let aggregate = match reader.string("aggregate_function")? {
        None => Aggregate::Sum,
        Some(s) => Aggregate::parse(&s).map_err(|e| reader.unsupported("aggregate_function", e))?,
    };
    let attrs = reader.attributes("target")?;
    let head = Head::Regressor {
        n_targets,
        aggregate,
    };
    TreeEnsemble::inference_op(REGRESSOR, attrs, head)
}

/// The `OpBuilder` for `TreeEnsemble` (ai.onnx.ml opset 5): refused with what to do instead,
/// rather than tract's bare "unimplemented".
pub fn tree_ensemble_v5(_ctx: &ParsingContext, _node: &NodeProto) -> Built {
    bail!(
        "TreeEnsemble (ai.onnx.ml opset 5): {ORT_HINT}; or export with ai.onnx.ml opset 3 or \
         lower, which writes TreeEnsembleClassifier / TreeEnsembleRegressor"
    )
}

impl Reader<'_> {
    /// `name` (`FLOATS`) or `name_as_tensor` (a tensor of floats or doubles), widened to f64;
    /// true when the tensor holds doubles.
    fn values(
        &self,
        name: &'static str,
        tensor_name: &'static str,
    ) -> TractResult<(Vec<f64>, bool)> {
        let floats = self.get(name, AttributeType::Floats)?;
        let tensor = self.get(tensor_name, AttributeType::Tensor)?;
        match (floats, tensor) {
            (Some(_), Some(_)) => Err(self.invalid(
                tensor_name,
                format!("both {name} and {tensor_name} are set"),
            )),
            (Some(a), None) => Ok((a.floats.iter().map(|&v| f64::from(v)).collect(), false)),
            (None, None) => Ok((Vec::new(), false)),
            (None, Some(a)) => {
                let proto =
                    a.t.as_ref()
                        .ok_or_else(|| self.invalid(tensor_name, "holds no tensor"))?;
                let t = self
                    .ctx
                    .load_tensor(proto)
                    .map_err(|e| self.invalid(tensor_name, format!("{e:#}")))?;
                let double = match t.datum_type() {
                    DatumType::F64 => true,
                    DatumType::F32 => false,
                    other => {
                        return Err(self.invalid(
                            tensor_name,
                            format!("holds {other:?}, not floats or doubles"),
                        ))
                    }
                };
                let t = t.cast_to::<f64>()?;
                let values = t.try_as_plain_ram()?.as_slice::<f64>()?.to_vec();
                Ok((values, double))
            }
        }
    }

    /// The node and leaf attributes shared by both operators (`leaf` is `class` or `target`).
    fn attributes(&self, leaf: &'static str) -> TractResult<Attributes> {
        let (nodes_values, double_values) =
            self.values("nodes_values", "nodes_values_as_tensor")?;
        let (weights_name, weights_tensor) = match leaf {
            "class" => ("class_weights", "class_weights_as_tensor"),
            _ => ("target_weights", "target_weights_as_tensor"),
        };
        let (leaf_weights, double_weights) = self.values(weights_name, weights_tensor)?;
        let (base_values, double_base) = self.values("base_values", "base_values_as_tensor")?;
        let modes = self
            .strings("nodes_modes")?
            .unwrap_or_default()
            .iter()
            .map(|s| Mode::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid("nodes_modes", e))?;
        let post_transform = self.post_transform()?;
        let ints = |name: &str| self.ints_or_empty(name);
        let (treeids, nodeids, ids) = match leaf {
            "class" => ("class_treeids", "class_nodeids", "class_ids"),
            _ => ("target_treeids", "target_nodeids", "target_ids"),
        };
        Ok(Attributes {
            nodes_treeids: ints("nodes_treeids")?,
            nodes_nodeids: ints("nodes_nodeids")?,
            nodes_featureids: ints("nodes_featureids")?,
            nodes_values,
            nodes_modes: modes,
            nodes_truenodeids: ints("nodes_truenodeids")?,
            nodes_falsenodeids: ints("nodes_falsenodeids")?,
            nodes_missing_value_tracks_true: ints("nodes_missing_value_tracks_true")?,
            leaf_treeids: ints(treeids)?,
            leaf_nodeids: ints(nodeids)?,
            leaf_ids: ints(ids)?,
            leaf_weights,
            base_values,
            post_transform,
            double: double_values || double_weights || double_base,
        })
    }
}

/// The inference-time op: holds the attributes until the input's type is known (a double input
/// computes in double, as onnxruntime does), then wires [`TreeEnsembleOp`].
#[derive(Clone, Debug)]
struct TreeEnsemble {
    op: &'static str,
    attrs: Arc<Attributes>,
    /// Built at parse time so that a refused model fails at load, and reused when the input is
    /// not double.
    ensemble: Arc<Ensemble>,
}

impl TreeEnsemble {
    /// Builds the ensemble (a refused model fails here, at load) and the op tract wires.
    fn inference_op(op: &'static str, attrs: Attributes, head: Head) -> Built {
        let ensemble = Ensemble::build(&attrs, head).map_err(|e| build_refusal(op, e))?;
        Ok((
            expand(TreeEnsemble {
                op,
                attrs: Arc::new(attrs),
                ensemble: Arc::new(ensemble),
            }),
            vec![],
        ))
    }

    fn classifier(&self) -> Option<&Labels> {
        match &self.ensemble.head {
            Head::Classifier { labels } => Some(labels),
            Head::Regressor { .. } => None,
        }
    }
}

impl Expansion for TreeEnsemble {
    fn name(&self) -> StaticName {
        self.op.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} trees, {} outputs per row",
            self.ensemble.trees(),
            self.ensemble.width()
        )])
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(if self.classifier().is_some() { 2 } else { 1 })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.nboutputs()?)?;
        let op = self.op;
        s.given(&inputs[0].rank, move |_, rank| {
            if rank != 2 {
                bail!("{op}: the input has rank {rank}; only [N, features] inputs are served")
            }
            Ok(())
        })?;
        s.given(&inputs[0].datum_type, move |_, dt| {
            if !matches!(
                dt,
                DatumType::F32 | DatumType::F64 | DatumType::I64 | DatumType::I32
            ) {
                bail!("{op}: input of type {dt:?}; float, double, int64 or int32 is expected")
            }
            Ok(())
        })?;
        let scores = outputs.len() - 1;
        if let Some(labels) = self.classifier() {
            s.equals(&outputs[0].datum_type, label_type(labels))?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        }
        s.equals(&outputs[scores].datum_type, DatumType::F32)?;
        s.equals(&outputs[scores].rank, 2)?;
        s.equals(&outputs[scores].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[scores].shape[1], self.ensemble.width().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input_dt = model.outlet_fact(inputs[0])?.datum_type;
        let ensemble = if input_dt == DatumType::F64 && !self.ensemble.is_double() {
            let attrs = Attributes {
                double: true,
                ..(*self.attrs).clone()
            };
            let built = Ensemble::build(&attrs, self.ensemble.head.clone())
                .map_err(|e| build_refusal(self.op, e))?;
            Arc::new(built)
        } else {
            self.ensemble.clone()
        };
        let op = TreeEnsembleOp {
            op: self.op,
            ensemble,
        };
        model.wire_node(prefix, MlOp(Arc::new(op)), inputs)
    }
}

/// What the typed op computes: one evaluation of the whole ensemble per call.
struct TreeEnsembleOp {
    op: &'static str,
    ensemble: Arc<Ensemble>,
}

impl fmt::Debug for TreeEnsembleOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({} trees, {} outputs per row)",
            self.op,
            self.ensemble.trees(),
            self.ensemble.width()
        )
    }
}

impl Compute for TreeEnsembleOp {
    fn name(&self) -> &'static str {
        self.op
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        let width = self.ensemble.width();
        Ok(match &self.ensemble.head {
            Head::Classifier { labels } => classifier_facts(labels, n, width),
            Head::Regressor { .. } => tvec!(f32::fact([n, width.to_dim()])),
        })
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[rows, features] = input.shape() else {
            bail!(
                "{}: the input has shape {:?}; [N, features] is expected",
                self.op,
                input.shape()
            )
        };
        let e = &self.ensemble;
        let mut scores = vec![0f32; rows * e.width()];
        let classifier = matches!(e.head, Head::Classifier { .. });
        let mut picks = vec![Pick::Class(0); if classifier { rows } else { 0 }];
        let ram = input.try_as_plain_ram()?;
        let run = if e.is_double() {
            let x: Cow<[f64]> = match input.datum_type() {
                DatumType::F64 => Cow::Borrowed(ram.as_slice::<f64>()?),
                DatumType::F32 => ram
                    .as_slice::<f32>()?
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
                // onnxruntime compares integers with float thresholds as floats.
                DatumType::I64 => ram
                    .as_slice::<i64>()?
                    .iter()
                    .map(|&v| f64::from(v as f32))
                    .collect(),
                DatumType::I32 => ram
                    .as_slice::<i32>()?
                    .iter()
                    .map(|&v| f64::from(v as f32))
                    .collect(),
                dt => bail!("{}: input of type {dt:?}", self.op),
            };
            e.run(Rows::F64(&x), features, &mut scores, &mut picks)
        } else {
            let x: Cow<[f32]> = match input.datum_type() {
                DatumType::F32 => Cow::Borrowed(ram.as_slice::<f32>()?),
                DatumType::I64 => ram.as_slice::<i64>()?.iter().map(|&v| v as f32).collect(),
                DatumType::I32 => ram.as_slice::<i32>()?.iter().map(|&v| v as f32).collect(),
                dt => bail!("{}: input of type {dt:?}", self.op),
            };
            e.run(Rows::F32(&x), features, &mut scores, &mut picks)
        };
        run.map_err(|reason| format_err!("{}: {reason}", self.op))?;
        let scores =
            tract_ndarray::Array2::from_shape_vec((rows, e.width()), scores)?.into_tensor();
        let Head::Classifier { labels } = &e.head else {
            return Ok(tvec!(scores.into_tvalue()));
        };
        let labels = match labels {
            Labels::Int(values) => {
                let picked: Vec<i64> = picks
                    .iter()
                    .map(|p| match *p {
                        Pick::Class(i) => values[i],
                        Pick::Literal(v) => v,
                    })
                    .collect();
                tract_ndarray::Array1::from_vec(picked).into_tensor()
            }
            Labels::Str(values) => {
                let picked: Vec<String> = picks
                    .iter()
                    .map(|p| match *p {
                        Pick::Class(i) => values[i].clone(),
                        // The literal is a class index for string labels (two classes: 0 or 1).
                        Pick::Literal(v) => values[v as usize].clone(),
                    })
                    .collect();
                tract_ndarray::Array1::from_vec(picked).into_tensor()
            }
        };
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }
}
