//! Our own `ai.onnx.ml` operators (and the text operators of skl2onnx's pipelines), registered
//! in tract's ONNX op register in place of tract's or where tract has none. tract 0.23's
//! `TreeEnsembleClassifier` picks wrong labels for binary models and refuses boosted ones; its
//! `LinearClassifier`, `Normalizer`, `CategoryMapper` and `ArrayFeatureExtractor` answer
//! otherwise than onnxruntime in cases exporters write; the rest it does not have. These
//! answer as onnxruntime does (the reference every exporter's users compare against) or refuse
//! the model at load, naming the operator and the attribute.
//!
//! Each operator's computation is a pure module with no tract in it (`trees`, `linear`, `svm`,
//! `transform`, `lookup`, `text`); `ops` (trees) and `kernels` (the rest) read the attributes
//! and wire them, all as the one typed op of `wiring`. Nothing here knows the engine around it:
//! [`onnx`] is the only entry point.

mod attrs;
mod common;
mod flatten;
mod gemm;
mod kernels;
mod linear;
mod lookup;
mod ops;
mod svm;
mod text;
mod transform;
pub mod trees;
mod wiring;

/// tract's ONNX framework with our operators registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    let r = &mut onnx.op_register;
    r.insert("TreeEnsembleClassifier", ops::tree_classifier);
    r.insert("TreeEnsembleRegressor", ops::tree_regressor);
    r.insert("TreeEnsemble", ops::tree_ensemble_v5);
    r.insert("LinearClassifier", kernels::linear_classifier);
    r.insert("LinearRegressor", kernels::linear_regressor);
    r.insert("SVMClassifier", kernels::svm_classifier);
    r.insert("SVMRegressor", kernels::svm_regressor);
    r.insert("Scaler", kernels::scaler);
    r.insert("Imputer", kernels::imputer);
    r.insert("OneHotEncoder", kernels::one_hot_encoder);
    r.insert("Normalizer", kernels::normalizer);
    r.insert("Binarizer", kernels::binarizer);
    r.insert("ArrayFeatureExtractor", kernels::array_feature_extractor);
    r.insert("FeatureVectorizer", kernels::feature_vectorizer);
    r.insert("LabelEncoder", kernels::label_encoder);
    r.insert("CategoryMapper", kernels::category_mapper);
    r.insert("ZipMap", kernels::zip_map);
    r.insert("StringNormalizer", kernels::string_normalizer);
    r.insert("Tokenizer", kernels::tokenizer);
    r.insert("TfIdfVectorizer", kernels::tfidf_vectorizer);
    r.insert("Flatten", flatten::flatten);
    r.insert("Gemm", gemm::gemm);
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

    /// An attribute of `kind` named `name`; `set` writes its value.
    fn attr(
        name: &str,
        kind: AttributeType,
        set: impl FnOnce(&mut AttributeProto),
    ) -> AttributeProto {
        let mut a = AttributeProto {
            name: name.into(),
            r#type: kind as i32,
            ..Default::default()
        };
        set(&mut a);
        a
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        attr(name, AttributeType::Int, |a| a.i = v)
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        attr(name, AttributeType::Ints, |a| a.ints = v.to_vec())
    }

    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        attr(name, AttributeType::Floats, |a| a.floats = v.to_vec())
    }

    fn strings(name: &str, v: &[&str]) -> AttributeProto {
        let v = v.iter().map(|s| s.as_bytes().to_vec()).collect();
        attr(name, AttributeType::Strings, |a| a.strings = v)
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        attr(name, AttributeType::String, |a| a.s = v.as_bytes().to_vec())
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

    /// A one-node tree ensemble over one `[N, 2]` float input, loaded through our register.
    fn load(op: &str, attribute: Vec<AttributeProto>) -> TractResult<Arc<TypedRunnableModel>> {
        let outputs: &[&str] = if op == "TreeEnsembleRegressor" {
            &["y"]
        } else {
            &["label", "scores"]
        };
        load_node(op, "ai.onnx.ml", 1, outputs, attribute, 3)
    }

    fn run(plan: &Arc<TypedRunnableModel>, rows: &[[f32; 2]]) -> TVec<TValue> {
        let x = tract_ndarray::Array2::from_shape_fn((rows.len(), 2), |(r, c)| rows[r][c]);
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(plan).unwrap();
        state.run(tvec!(x.into_tensor().into_tvalue())).unwrap()
    }

    /// The load error, in full.
    fn refused(op: &str, loaded: TractResult<Arc<TypedRunnableModel>>) -> String {
        match loaded {
            Ok(_) => panic!("{op}: the model loads, but must be refused"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn refusal(op: &str, attribute: Vec<AttributeProto>) -> String {
        refused(op, load(op, attribute))
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
            int("n_targets", 1),
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

    /// A one-node graph of `op` (in `domain`) over one `[N, 2]` input of `elem_type`, loaded
    /// through our register.
    fn load_node(
        op: &str,
        domain: &str,
        elem_type: i32,
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
        ml_opset: i64,
    ) -> TractResult<Arc<TypedRunnableModel>> {
        let graph = GraphProto {
            node: vec![NodeProto {
                op_type: op.into(),
                domain: domain.into(),
                input: vec!["x".into()],
                output: outputs.iter().map(|o| o.to_string()).collect(),
                attribute,
                ..Default::default()
            }],
            input: vec![value_info("x", elem_type)],
            output: outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: o.to_string(),
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
                    version: ml_opset,
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

    fn node_refusal(
        op: &str,
        elem_type: i32,
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
        ml_opset: i64,
    ) -> String {
        let loaded = load_node(op, "ai.onnx.ml", elem_type, outputs, attribute, ml_opset);
        refused(op, loaded)
    }

    #[test]
    fn what_onnxruntime_answers_undefined_or_otherwise_is_refused_with_the_attribute() {
        let hint = "[engine] kind = \"ort\"";
        // One coefficient row, two labels, PROBIT: onnxruntime leaves the second score unwritten.
        let e = node_refusal(
            "LinearClassifier",
            1,
            &["label", "scores"],
            vec![
                floats("coefficients", &[1.0, 2.0]),
                floats("intercepts", &[0.5]),
                ints("classlabels_ints", &[0, 1]),
                string("post_transform", "PROBIT"),
            ],
            1,
        );
        assert!(
            e.contains("LinearClassifier attribute 'post_transform'") && e.contains(hint),
            "{e}"
        );
        // Opset 4's tensor attributes are not implemented.
        let e = node_refusal(
            "LabelEncoder",
            1,
            &["y"],
            vec![
                attr("keys_tensor", AttributeType::Tensor, |_| {}),
                floats("values_floats", &[1.0]),
            ],
            4,
        );
        assert!(
            e.contains("LabelEncoder attribute 'keys_tensor'") && e.contains(hint),
            "{e}"
        );
        // A token expression RE2 could match otherwise than Rust's regex.
        let attribute = vec![
            int("mark", 0),
            string("pad_value", "#"),
            int("mincharnum", 1),
            string("tokenexp", r"\w+"),
        ];
        let loaded = load_node("Tokenizer", "com.microsoft", 8, &["tokens"], attribute, 1);
        let e = refused("Tokenizer", loaded);
        assert!(
            e.contains("Tokenizer attribute 'tokenexp'") && e.contains(hint),
            "{e}"
        );
        // onnxruntime refuses an SVM without kernel_params: malformed, not a hint to use it.
        let e = node_refusal(
            "SVMRegressor",
            1,
            &["y"],
            vec![floats("coefficients", &[1.0, 2.0]), floats("rho", &[0.0])],
            1,
        );
        assert!(
            e.contains("SVMRegressor attribute 'kernel_params'") && e.contains("malformed"),
            "{e}"
        );
    }

    #[test]
    fn a_category_mapper_with_both_defaults_loads_as_in_onnxruntime() {
        // tract's own CategoryMapper refuses a node that sets both defaults; ONNX allows it.
        let plan = load_node(
            "CategoryMapper",
            "ai.onnx.ml",
            7,
            &["y"],
            vec![
                strings("cats_strings", &["a", "b"]),
                ints("cats_int64s", &[1, 2]),
                int("default_int64", 9),
                string("default_string", "?"),
            ],
            1,
        )
        .unwrap();
        let x = tract_ndarray::Array2::from_shape_vec((1, 2), vec![7i64, 2]).unwrap();
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan).unwrap();
        let out = state.run(tvec!(x.into_tensor().into_tvalue())).unwrap();
        let y = out[0].try_as_plain_ram().unwrap();
        assert_eq!(y.as_slice::<String>().unwrap(), &["?", "b"]);
    }
}
