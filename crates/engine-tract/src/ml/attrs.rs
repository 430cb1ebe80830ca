//! Reading an operator's attributes from the ONNX node, for every operator of ours: typed
//! getters that name the operator and the attribute when something is wrong, and the refusal
//! every load error goes through. A model we could serve only by guessing is refused here, at
//! load, with what serves it instead.

use std::fmt;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

use super::common::{BuildError, Labels, PostTransform};

/// What a refusal tells the user to do instead.
pub const ORT_HINT: &str =
    "tract does not serve it; [engine] kind = \"ort\" (onnxruntime) or \"auto\" (the first engine that serves it) does";

/// A load error naming the operator and the attribute; for a valid model we do not serve, it
/// says which engine does.
pub fn refusal(
    op: &str,
    attribute: &str,
    reason: impl fmt::Display,
    unsupported: bool,
) -> TractError {
    if unsupported {
        format_err!("{op} attribute '{attribute}': {reason}: {ORT_HINT}")
    } else {
        format_err!("{op} attribute '{attribute}': {reason} (the model is malformed)")
    }
}

pub fn build_refusal(op: &str, e: BuildError) -> TractError {
    refusal(op, e.attribute, e.reason, e.unsupported)
}

/// One node's attributes, read for the operator `op`.
pub struct Reader<'a> {
    pub op: &'static str,
    pub node: &'a NodeProto,
    pub ctx: &'a ParsingContext<'a>,
}

impl<'a> Reader<'a> {
    /// A reader for `op` that has refused, first, every attribute outside `known`.
    pub fn checked(
        op: &'static str,
        ctx: &'a ParsingContext<'a>,
        node: &'a NodeProto,
        known: &[&[&str]],
    ) -> TractResult<Reader<'a>> {
        let r = Reader { op, node, ctx };
        r.check_known(known)?;
        Ok(r)
    }

    pub fn invalid(&self, attribute: &str, reason: impl fmt::Display) -> TractError {
        refusal(self.op, attribute, reason, false)
    }

    pub fn unsupported(&self, attribute: &str, reason: impl fmt::Display) -> TractError {
        refusal(self.op, attribute, reason, true)
    }

    /// Refuses attributes that are in none of `known` (not implemented, or not ONNX), naming
    /// them, and references to function attributes.
    pub fn check_known(&self, known: &[&[&str]]) -> TractResult<()> {
        for a in &self.node.attribute {
            let name = a.name.as_str();
            if !known.iter().any(|list| list.contains(&name)) {
                return Err(self.unsupported(name, "this attribute is not implemented"));
            }
            if !a.ref_attr_name.is_empty() {
                return Err(self.unsupported(name, "a reference to a function attribute"));
            }
        }
        Ok(())
    }

    /// The version of the `ai.onnx.ml` operator set the model imports (1 when it names none).
    pub fn ml_opset(&self) -> i64 {
        self.ctx
            .model
            .opset_import
            .iter()
            .find(|o| o.domain == "ai.onnx.ml")
            .map(|o| o.version)
            .unwrap_or(1)
    }

    pub fn get(&self, name: &str, kind: AttributeType) -> TractResult<Option<&AttributeProto>> {
        let Some(a) = self.node.attribute.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        if a.r#type != kind as i32 && a.r#type != AttributeType::Undefined as i32 {
            return Err(self.invalid(name, format!("is not of type {}", kind.as_str_name())));
        }
        Ok(Some(a))
    }

    pub fn ints(&self, name: &str) -> TractResult<Option<&[i64]>> {
        Ok(self
            .get(name, AttributeType::Ints)?
            .map(|a| a.ints.as_slice()))
    }

    pub fn int(&self, name: &str) -> TractResult<Option<i64>> {
        Ok(self.get(name, AttributeType::Int)?.map(|a| a.i))
    }

    pub fn float(&self, name: &str) -> TractResult<Option<f32>> {
        Ok(self.get(name, AttributeType::Float)?.map(|a| a.f))
    }

    pub fn floats(&self, name: &str) -> TractResult<Option<&[f32]>> {
        Ok(self
            .get(name, AttributeType::Floats)?
            .map(|a| a.floats.as_slice()))
    }

    pub fn string(&self, name: &str) -> TractResult<Option<String>> {
        self.get(name, AttributeType::String)?
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| self.invalid(name, "is not UTF-8")))
            .transpose()
    }

    pub fn strings(&self, name: &str) -> TractResult<Option<Vec<String>>> {
        self.get(name, AttributeType::Strings)?
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone())
                            .map_err(|_| self.invalid(name, "holds a string that is not UTF-8"))
                    })
                    .collect()
            })
            .transpose()
    }

    /// A required attribute: absent is a malformed model.
    pub fn required<T>(&self, name: &str, value: Option<T>) -> TractResult<T> {
        value.ok_or_else(|| self.invalid(name, "is required and not set"))
    }

    pub fn floats_or_empty(&self, name: &str) -> TractResult<Vec<f32>> {
        Ok(self.floats(name)?.map(<[f32]>::to_vec).unwrap_or_default())
    }

    pub fn ints_or_empty(&self, name: &str) -> TractResult<Vec<i64>> {
        Ok(self.ints(name)?.map(<[i64]>::to_vec).unwrap_or_default())
    }

    /// `post_transform`, `None` where the node leaves it out.
    pub fn post_transform(&self) -> TractResult<Option<PostTransform>> {
        self.string("post_transform")?
            .map(|s| PostTransform::parse(&s))
            .transpose()
            .map_err(|e| self.invalid("post_transform", e))
    }

    /// `ints_name` (`classlabels_ints` or `_int64s`) or `classlabels_strings`, exactly one of
    /// them. `empty_is_unset`: whether an empty list counts as left out (so the linear, SVM
    /// and `ZipMap` operators read it) or as set (so the tree ensembles do).
    pub fn class_labels(
        &self,
        ints_name: &'static str,
        empty_is_unset: bool,
    ) -> TractResult<Labels> {
        let keep = |empty: bool| !(empty_is_unset && empty);
        let ints = self.ints(ints_name)?.filter(|v| keep(v.is_empty()));
        let strings = self
            .strings("classlabels_strings")?
            .filter(|v| keep(v.is_empty()));
        match (ints, strings) {
            (Some(v), None) => Ok(Labels::Int(v.to_vec())),
            (None, Some(v)) => Ok(Labels::Str(v)),
            (None, None) => Err(self.invalid(
                ints_name,
                format!("neither {ints_name} nor classlabels_strings is set"),
            )),
            (Some(_), Some(_)) => Err(self.invalid(
                "classlabels_strings",
                format!("both {ints_name} and classlabels_strings are set"),
            )),
        }
    }
}
