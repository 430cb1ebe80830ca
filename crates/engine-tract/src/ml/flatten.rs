//! ONNX `Flatten`, as tract's own but for one case: tract 0.23 refuses an input with more than
//! one symbolic dimension ("square of symbols"), and skl2onnx's text pipelines flatten the
//! tokenizer's `[N, tokens]` (both known only per batch). The output is the two products, as
//! ONNX says; the wiring is tract's (axis ops), which fails at load where the products cannot
//! be expressed as axis changes.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::wiring::Built;

#[derive(Clone, Debug)]
struct Flatten {
    axis: i64,
}

pub fn flatten(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    Ok((expand(Flatten { axis }), vec![]))
}

impl Flatten {
    fn compute_shape<D: DimLike>(&self, shape: &[D]) -> TractResult<[D; 2]> {
        let axis = if self.axis >= 0 {
            self.axis
        } else {
            self.axis + shape.len() as i64
        };
        let axis = usize::try_from(axis)
            .ok()
            .filter(|&a| a <= shape.len())
            .ok_or_else(|| {
                format_err!(
                    "Flatten: axis {} of a rank {} input",
                    self.axis,
                    shape.len()
                )
            })?;
        Ok([
            shape[..axis].iter().cloned().product::<D>(),
            shape[axis..].iter().cloned().product(),
        ])
    }
}

impl Expansion for Flatten {
    fn name(&self) -> StaticName {
        "Flatten".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let [a, b] = self.compute_shape(&shape)?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(vec![a, b]))
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input_shape = model.outlet_fact(inputs[0])?.shape.to_tvec();
        let output_shape = self.compute_shape(&input_shape)?;
        let mut wire = tvec!(inputs[0]);
        let ops = tract_onnx::tract_core::ops::change_axes::to_axis_ops_with_tf_rules(
            &input_shape,
            &output_shape,
        )?;
        for (ix, op) in ops.into_iter().enumerate() {
            wire = model.wire_node(format!("{prefix}.{ix}"), op, &wire)?;
        }
        Ok(wire)
    }
}
