//! ONNX export: the fitted prep and network as one graph, so serving runs exactly the prep the
//! model was trained with.
//!
//! Input `input`: FP32 `[N, features]`, the config's feature order, categories as numeric codes,
//! NaN for a missing value. Outputs are named as scikit-learn's exporters name them, so the
//! monitor and the shadow comparison treat a trained version like any other: a classifier has
//! `label` (INT64 `[N]`) and `probabilities` (FP32 `[N, classes]`), a regressor `variable` (FP32
//! `[N, 1]`). Opset 13, IR version 8 (what tract and onnxruntime both read).

use prost::Message;
use tract_onnx::pb;

use crate::nn::{Network, Task};
use crate::prep::{FeaturePrep, Prep};

/// What the graph needs beyond the prep and the network.
pub struct ExportSpec<'a> {
    pub prep: &'a Prep,
    pub network: &'a Network,
    /// Class labels in class-index order, as integers (classification).
    pub classes: &'a [i64],
    /// The regressor's target was standardised: value = out · scale + mean.
    pub target_mean: f32,
    pub target_scale: f32,
    /// Written into the model's metadata (`cairn.run`).
    pub run_id: &'a str,
}

pub const OPSET: i64 = 13;
pub const IR_VERSION: i64 = 8;

/// The model file's bytes.
pub fn export(spec: &ExportSpec<'_>) -> Vec<u8> {
    let mut g = Graph::default();
    let width = spec.prep.features.len() as i64;
    let prepared = prep_nodes(&mut g, spec.prep);
    let h = dense_nodes(&mut g, spec.network, prepared);
    let outputs = output_nodes(&mut g, spec, &h);
    let graph = pb::GraphProto {
        name: "cairn-train".into(),
        node: g.nodes,
        initializer: g.inits,
        input: vec![value_info(
            "input",
            pb::tensor_proto::DataType::Float,
            &[None, Some(width)],
        )],
        output: outputs,
        ..Default::default()
    };
    let names: Vec<String> = spec
        .prep
        .features
        .iter()
        .map(|f| match f {
            FeaturePrep::Numeric { name, .. } | FeaturePrep::Categorical { name, .. } => {
                name.clone()
            }
        })
        .collect();
    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "cairn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: vec![
            entry("cairn.run", spec.run_id),
            entry(
                "cairn.features",
                &serde_json::to_string(&names).unwrap_or_default(),
            ),
        ],
        ..Default::default()
    };
    model.encode_to_vec()
}

/// The prep as graph nodes: missing values filled, then the numeric features scaled and the
/// categorical ones one-hot encoded (each with its unknown bucket). Returns the name of the
/// prepared tensor the network reads.
fn prep_nodes(g: &mut Graph, prep: &Prep) -> String {
    let width = prep.features.len() as i64;
    let fill: Vec<f32> = prep
        .features
        .iter()
        .map(|f| match f {
            FeaturePrep::Numeric { fill, .. } | FeaturePrep::Categorical { fill, .. } => *fill,
        })
        .collect();
    g.init_f32("prep.fill", vec![width], fill);
    g.node("IsNaN", &["input"], "prep.missing", vec![]);
    g.node(
        "Where",
        &["prep.missing", "prep.fill", "input"],
        "prep.imputed",
        vec![],
    );
    let mut pieces = Vec::new();
    if numeric_nodes(g, prep) {
        pieces.push("prep.scaled");
    }
    if categorical_nodes(g, prep) {
        pieces.push("prep.onehot");
        pieces.push("prep.unknown");
    }
    if pieces.len() == 1 {
        pieces[0].to_string()
    } else {
        g.node("Concat", &pieces, "prep.out", vec![int("axis", 1)]);
        "prep.out".to_string()
    }
}

/// The numeric features, standardised into `prep.scaled`; `false` (and no nodes) when there
/// are none.
fn numeric_nodes(g: &mut Graph, prep: &Prep) -> bool {
    let numeric: Vec<(usize, f32, f32)> = prep
        .numeric()
        .map(|(j, f)| match f {
            FeaturePrep::Numeric { mean, scale, .. } => (j, *mean, *scale),
            FeaturePrep::Categorical { .. } => unreachable!(),
        })
        .collect();
    if numeric.is_empty() {
        return false;
    }
    let n = numeric.len() as i64;
    g.init_i64(
        "prep.numeric_index",
        vec![n],
        numeric.iter().map(|c| c.0 as i64).collect(),
    );
    g.init_f32("prep.mean", vec![n], numeric.iter().map(|c| c.1).collect());
    g.init_f32("prep.scale", vec![n], numeric.iter().map(|c| c.2).collect());
    g.node(
        "Gather",
        &["prep.imputed", "prep.numeric_index"],
        "prep.numeric",
        vec![int("axis", 1)],
    );
    g.node(
        "Sub",
        &["prep.numeric", "prep.mean"],
        "prep.centered",
        vec![],
    );
    g.node(
        "Div",
        &["prep.centered", "prep.scale"],
        "prep.scaled",
        vec![],
    );
    true
}

/// The categorical features one-hot encoded into `prep.onehot`, plus `prep.unknown` (1 where a
/// feature's value is none of its kept categories); `false` (and no nodes) when there are none.
fn categorical_nodes(g: &mut Graph, prep: &Prep) -> bool {
    let cats: Vec<(usize, &[f32])> = prep
        .categorical()
        .map(|(j, f)| match f {
            FeaturePrep::Categorical { categories, .. } => (j, categories.as_slice()),
            FeaturePrep::Numeric { .. } => unreachable!(),
        })
        .collect();
    if cats.is_empty() {
        return false;
    }
    let slots: usize = cats.iter().map(|c| c.1.len()).sum();
    let mut index = Vec::with_capacity(slots);
    let mut codes = Vec::with_capacity(slots);
    // Slot k belongs to categorical feature owner[k]: the MatMul sums each feature's slots.
    let mut owner = vec![0f32; slots * cats.len()];
    for (c, (j, categories)) in cats.iter().enumerate() {
        for code in categories.iter() {
            owner[index.len() * cats.len() + c] = 1.0;
            index.push(*j as i64);
            codes.push(*code);
        }
    }
    g.init_i64("prep.category_index", vec![slots as i64], index);
    g.init_f32("prep.category_code", vec![slots as i64], codes);
    g.init_f32(
        "prep.category_owner",
        vec![slots as i64, cats.len() as i64],
        owner,
    );
    g.init_f32("prep.one", vec![1], vec![1.0]);
    g.node(
        "Gather",
        &["prep.imputed", "prep.category_index"],
        "prep.categories",
        vec![int("axis", 1)],
    );
    g.node(
        "Equal",
        &["prep.categories", "prep.category_code"],
        "prep.is_category",
        vec![],
    );
    g.node(
        "Cast",
        &["prep.is_category"],
        "prep.onehot",
        vec![int("to", pb::tensor_proto::DataType::Float as i64)],
    );
    g.node(
        "MatMul",
        &["prep.onehot", "prep.category_owner"],
        "prep.known",
        vec![],
    );
    g.node("Sub", &["prep.one", "prep.known"], "prep.unknown", vec![]);
    true
}

/// The network's layers (Gemm, ReLU between them) on tensor `input`; returns the name of the
/// last layer's output (the logits).
fn dense_nodes(g: &mut Graph, network: &Network, input: String) -> String {
    let mut h = input;
    let last = network.layers.len() - 1;
    for (k, layer) in network.layers.iter().enumerate() {
        let (w, b) = (format!("dense{k}.weight"), format!("dense{k}.bias"));
        g.init_f32(
            &w,
            vec![layer.outputs as i64, layer.inputs as i64],
            layer.w.clone(),
        );
        g.init_f32(&b, vec![layer.outputs as i64], layer.b.clone());
        let out = format!("dense{k}");
        g.node("Gemm", &[&h, &w, &b], &out, vec![int("transB", 1)]);
        h = out;
        if k < last {
            let relu = format!("relu{k}");
            g.node("Relu", &[&h], &relu, vec![]);
            h = relu;
        }
    }
    h
}

/// The outputs scikit-learn's exporters would give, from the logits `h`: a classifier's
/// `probabilities` and `label`, or a regressor's `variable` with the target's scaling undone.
fn output_nodes(g: &mut Graph, spec: &ExportSpec<'_>, h: &str) -> Vec<pb::ValueInfoProto> {
    match spec.network.task {
        Task::Multiclass { .. } | Task::Binary => {
            if spec.network.task == Task::Binary {
                g.init_f32("out.one", vec![1], vec![1.0]);
                g.node("Sigmoid", &[h], "out.p1", vec![]);
                g.node("Sub", &["out.one", "out.p1"], "out.p0", vec![]);
                g.node(
                    "Concat",
                    &["out.p0", "out.p1"],
                    "probabilities",
                    vec![int("axis", 1)],
                );
            } else {
                g.node("Softmax", &[h], "probabilities", vec![int("axis", 1)]);
            }
            g.init_i64(
                "out.classes",
                vec![spec.classes.len() as i64],
                spec.classes.to_vec(),
            );
            g.node(
                "ArgMax",
                &["probabilities"],
                "out.index",
                vec![int("axis", 1), int("keepdims", 0)],
            );
            g.node(
                "Gather",
                &["out.classes", "out.index"],
                "label",
                vec![int("axis", 0)],
            );
            vec![
                value_info("label", pb::tensor_proto::DataType::Int64, &[None]),
                value_info(
                    "probabilities",
                    pb::tensor_proto::DataType::Float,
                    &[None, Some(spec.classes.len() as i64)],
                ),
            ]
        }
        Task::Regression => {
            g.init_f32("out.scale", vec![1], vec![spec.target_scale]);
            g.init_f32("out.mean", vec![1], vec![spec.target_mean]);
            g.node("Mul", &[h, "out.scale"], "out.scaled", vec![]);
            g.node("Add", &["out.scaled", "out.mean"], "variable", vec![]);
            vec![value_info(
                "variable",
                pb::tensor_proto::DataType::Float,
                &[None, Some(1)],
            )]
        }
    }
}

#[derive(Default)]
struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

impl Graph {
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{output}.op"),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
    }

    fn init_f32(&mut self, name: &str, dims: Vec<i64>, values: Vec<f32>) {
        self.inits.push(pb::TensorProto {
            name: name.to_string(),
            dims,
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    fn init_i64(&mut self, name: &str, dims: Vec<i64>, values: Vec<i64>) {
        self.inits.push(pb::TensorProto {
            name: name.to_string(),
            dims,
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }
}

fn int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// A tensor value: `None` dims are the batch (`N`).
fn value_info(
    name: &str,
    dtype: pb::tensor_proto::DataType,
    dims: &[Option<i64>],
) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dtype as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => Value::DimValue(*v),
                                None => Value::DimParam("N".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
