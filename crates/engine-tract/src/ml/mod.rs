//! Our own `ai.onnx.ml` operators, registered in tract's ONNX op register in place of tract's:
//! tract 0.23's `TreeEnsembleClassifier` picks wrong labels for binary models and refuses
//! boosted ones, and it has no `TreeEnsembleRegressor`. These answer as onnxruntime does (the
//! reference every exporter's users compare against) or refuse the model at load.
//!
//! Nothing here knows the engine around it: [`onnx`] is the only entry point.

mod ops;
pub mod trees;

/// tract's ONNX framework with our tree ensembles registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("TreeEnsembleClassifier", ops::tree_classifier);
    onnx.op_register
        .insert("TreeEnsembleRegressor", ops::tree_regressor);
    onnx.op_register
        .insert("TreeEnsemble", ops::tree_ensemble_v5);
    onnx
}

#[cfg(test)]
mod tests {
    //! Loads hand-built graphs through the register; what they compute is held against
    //! onnxruntime by the zoo (`tests/models/zoo`), what they refuse is checked here.

    use tract_onnx::pb::attribute_proto::AttributeType;
    use tract_onnx::pb::{
        tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
        OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    use tract_onnx::prelude::*;

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Floats as i32,
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    fn strings(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Strings as i32,
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    /// One stump on feature 0: `x0 <= 0.5` goes to leaf 1, else leaf 2.
    fn stump() -> Vec<AttributeProto> {
        vec![
            ints("nodes_treeids", &[0, 0, 0]),
            ints("nodes_nodeids", &[0, 1, 2]),
            ints("nodes_featureids", &[0, 0, 0]),
            floats("nodes_values", &[0.5, 0.0, 0.0]),
            strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
            ints("nodes_truenodeids", &[1, 0, 0]),
            ints("nodes_falsenodeids", &[2, 0, 0]),
            ints("nodes_missing_value_tracks_true", &[1, 0, 0]),
        ]
    }

    fn value_info(name: &str, elem_type: i32) -> ValueInfoProto {
        let dim = |d: tensor_shape_proto::dimension::Value| tensor_shape_proto::Dimension {
            value: Some(d),
            ..Default::default()
        };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            dim(tensor_shape_proto::dimension::Value::DimParam("N".into())),
                            dim(tensor_shape_proto::dimension::Value::DimValue(2)),
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn load(op: &str, attribute: Vec<AttributeProto>) -> TractResult<Arc<TypedRunnableModel>> {
        let outputs: Vec<String> = if op == "TreeEnsembleRegressor" {
            vec!["y".into()]
        } else {
            vec!["label".into(), "scores".into()]
        };
        let graph = GraphProto {
            node: vec![NodeProto {
                op_type: op.into(),
                domain: "ai.onnx.ml".into(),
                input: vec!["x".into()],
                output: outputs.clone(),
                attribute,
                ..Default::default()
            }],
            input: vec![value_info("x", 1)],
            output: outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: o.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: 17,
                },
                OperatorSetIdProto {
                    domain: "ai.onnx.ml".into(),
                    version: 3,
                },
            ],
            graph: Some(graph),
            ..Default::default()
        };
        super::onnx()
            .model_for_proto_model(&proto)?
            .into_optimized()?
            .into_runnable()
    }

    fn run(plan: &Arc<TypedRunnableModel>, rows: &[[f32; 2]]) -> TVec<TValue> {
        let x = tract_ndarray::Array2::from_shape_fn((rows.len(), 2), |(r, c)| rows[r][c]);
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(plan).unwrap();
        state.run(tvec!(x.into_tensor().into_tvalue())).unwrap()
    }

    fn refusal(op: &str, attribute: Vec<AttributeProto>) -> String {
        match load(op, attribute) {
            Ok(_) => panic!("{op}: the model loads, but must be refused"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_binary_forest_with_weights_on_one_class_labels_as_onnxruntime() {
        // RandomForest from skl2onnx: class 0's weight is the probability of class 1.
        let mut a = stump();
        a.extend([
            ints("class_treeids", &[0, 0]),
            ints("class_nodeids", &[1, 2]),
            ints("class_ids", &[0, 0]),
            floats("class_weights", &[0.25, 0.75]),
            ints("classlabels_int64s", &[0, 1]),
        ]);
        let plan = load("TreeEnsembleClassifier", a).unwrap();
        let out = run(&plan, &[[0.0, 0.0], [1.0, 0.0], [f32::NAN, 0.0]]);
        let labels = out[0].try_as_plain_ram().unwrap();
        assert_eq!(labels.as_slice::<i64>().unwrap(), &[0, 1, 0]);
        let scores = out[1].try_as_plain_ram().unwrap();
        assert_eq!(
            scores.as_slice::<f32>().unwrap(),
            &[0.75, 0.25, 0.25, 0.75, 0.75, 0.25],
            "NaN goes the true way where nodes_missing_value_tracks_true says so"
        );
    }

    #[test]
    fn a_one_target_regressor_ignores_logistic_as_onnxruntime() {
        let mut a = stump();
        a.extend([
            ints("target_treeids", &[0, 0]),
            ints("target_nodeids", &[1, 2]),
            ints("target_ids", &[0, 0]),
            floats("target_weights", &[3.0, -4.0]),
            AttributeProto {
                name: "n_targets".into(),
                r#type: AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            },
            string("post_transform", "LOGISTIC"),
        ]);
        let plan = load("TreeEnsembleRegressor", a).unwrap();
        let out = run(&plan, &[[0.0, 0.0], [1.0, 0.0]]);
        let y = out[0].try_as_plain_ram().unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[3.0, -4.0]);
    }

    fn binary(extra: Vec<AttributeProto>) -> Vec<AttributeProto> {
        let mut a = stump();
        a.extend([
            ints("class_treeids", &[0, 0]),
            ints("class_nodeids", &[1, 2]),
            ints("class_ids", &[0, 0]),
            floats("class_weights", &[0.25, 0.75]),
            ints("classlabels_int64s", &[0, 1]),
        ]);
        a.extend(extra);
        a
    }

    #[test]
    fn what_is_not_implemented_is_refused_naming_the_operator_and_the_attribute() {
        let hint = "[engine] kind = \"ort\"";
        let e = refusal(
            "TreeEnsembleClassifier",
            binary(vec![ints("nodes_categories", &[1])]),
        );
        assert!(
            e.contains("TreeEnsembleClassifier attribute 'nodes_categories'") && e.contains(hint),
            "{e}"
        );
        // onnxruntime leaves the second score unwritten here.
        let e = refusal(
            "TreeEnsembleClassifier",
            binary(vec![string("post_transform", "PROBIT")]),
        );
        assert!(
            e.contains("attribute 'post_transform'") && e.contains(hint),
            "{e}"
        );
        // A classifier of one class: onnxruntime writes two scores into one column.
        let mut one = stump();
        one.extend([
            ints("class_treeids", &[0, 0]),
            ints("class_nodeids", &[1, 2]),
            ints("class_ids", &[0, 0]),
            floats("class_weights", &[0.25, 0.75]),
            ints("classlabels_int64s", &[7]),
        ]);
        let e = refusal("TreeEnsembleClassifier", one);
        assert!(
            e.contains("attribute 'classlabels_int64s'") && e.contains(hint),
            "{e}"
        );
        let e = refusal("TreeEnsemble", binary(vec![]));
        assert!(
            e.contains("TreeEnsemble (ai.onnx.ml opset 5)") && e.contains(hint),
            "{e}"
        );
    }

    #[test]
    fn malformed_trees_are_refused_at_load_not_looped_on() {
        // Node 1 is a branch pointing back to the root: walking it would never end.
        let mut a = binary(vec![]);
        for attr in a.iter_mut() {
            match attr.name.as_str() {
                "nodes_modes" => {
                    *attr = strings("nodes_modes", &["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"])
                }
                "nodes_truenodeids" => *attr = ints("nodes_truenodeids", &[1, 0, 0]),
                "nodes_falsenodeids" => *attr = ints("nodes_falsenodeids", &[2, 2, 0]),
                _ => {}
            }
        }
        let e = refusal("TreeEnsembleClassifier", a);
        assert!(e.contains("cycle") && e.contains("malformed"), "{e}");
        let e = refusal(
            "TreeEnsembleClassifier",
            binary(vec![floats("base_values", &[0.1, 0.2, 0.3])]),
        );
        assert!(e.contains("attribute 'base_values'"), "{e}");
    }
}
