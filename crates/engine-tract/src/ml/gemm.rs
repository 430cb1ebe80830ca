//! ONNX `Gemm`, as tract's own but in the inputs' element type: tract 0.23 wires `alpha` and
//! `beta` as FP32 constants (and multiplies by `beta` even when it is 1), so an FP16 `Gemm`
//! (every layer of a model converted to half precision) comes out FP32 and fails to load.
//! Here the scale factors are constants of the inputs' type, and a factor of 1 is not wired.

use tract_hir::ops;
use tract_hir::tract_core::ops::einsum::EinSum;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;
use tract_onnx::tract_hir::internal::*;

use super::wiring::Built;

#[derive(Clone, Debug)]
struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
}

pub fn gemm(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let float = |name: &str, default: f32| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(default, |a| a.f)
    };
    let flag = |name: &str| node.attribute.iter().any(|a| a.name == name && a.i != 0);
    Ok((
        expand(Gemm {
            alpha: float("alpha", 1.0),
            beta: float("beta", 1.0),
            trans_a: flag("transA"),
            trans_b: flag("transB"),
        }),
        vec![],
    ))
}

/// `factor` as a scalar of `dt` (the element type of the tensor it scales), broadcast to `rank`.
fn scale(
    model: &mut TypedModel,
    name: String,
    factor: f32,
    dt: DatumType,
    rank: usize,
    wire: OutletId,
) -> TractResult<OutletId> {
    if factor == 1.0 {
        return Ok(wire);
    }
    let constant = tensor0(factor).cast_to_dt(dt)?.into_owned();
    let constant = model.add_const(format!("{name}.cst"), constant.broadcast_into_rank(rank)?)?;
    Ok(model.wire_node(name, ops::math::mul(), &[constant, wire])?[0])
}

impl Expansion for Gemm {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() != 2 && inputs.len() != 3 {
            bail!("Gemm takes 2 or 3 inputs, this node has {}", inputs.len());
        }
        if inputs.len() == 3 {
            s.equals(&inputs[2].datum_type, &outputs[0].datum_type)?;
        }
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[1].rank, 2)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, &outputs[0].datum_type)?;
        let (ca, ra) = if self.trans_a { (0, 1) } else { (1, 0) };
        let (cb, rb) = if self.trans_b { (0, 1) } else { (1, 0) };
        s.equals(&inputs[0].shape[ra], &outputs[0].shape[0])?;
        s.equals(&inputs[0].shape[ca], &inputs[1].shape[rb])?;
        s.equals(&inputs[1].shape[cb], &outputs[0].shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (a, b, c) = (inputs[0], inputs[1], inputs.get(2));
        let dt = model.outlet_fact(a)?.datum_type;
        let axes = AxesMapping::for_numpy_matmul(2, self.trans_a, self.trans_b, false)?;
        let mut wire = model.wire_node(format!("{name}.ab"), EinSum::new(axes, dt), &[a, b])?[0];
        wire = scale(model, format!("{name}.alpha_ab"), self.alpha, dt, 2, wire)?;
        if let Some(&c) = c.filter(|_| self.beta != 0.0) {
            let mut c = c;
            while model.outlet_fact(c)?.rank() < 2 {
                c = model.wire_node(
                    format!("{name}.c_add_axis_{}", model.outlet_fact(c)?.rank()),
                    AxisOp::Add(0),
                    &[c],
                )?[0];
            }
            let c = scale(model, format!("{name}.beta_c"), self.beta, dt, 2, c)?;
            wire = model.wire_node(name, ops::math::add(), &[wire, c])?[0];
        }
        Ok(tvec!(wire))
    }
}
