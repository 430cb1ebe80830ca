//! Checking a decoded request against a version's inputs: the step that turns an
//! [`InferRequest`] into the [`ValidatedRequest`] that `batching` accepts.

use std::time::Duration;

use bytes::Bytes;

use super::{names, IoSpec, ModelIo};
use crate::batching::ValidatedRequest;
use crate::config::BatchShape;
use crate::request::{InferRequest, NamedTensor, RequestInputs};
use crate::tensor::{DataType, Tensor, TensorData};

/// Which served output to return, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputPick {
    /// Index into `ModelIo::outputs`.
    pub output: usize,
    pub binary: bool,
}

/// A request that does not fit its model. The message names the tensor, what was expected and
/// what was given.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// Checks names, datatypes, shapes and the batch size, and orders inputs as the engine wants.
pub fn validate(
    io: &ModelIo,
    request: InferRequest,
) -> Result<(ValidatedRequest, Vec<OutputPick>), InvalidRequest> {
    let InferRequest {
        inputs,
        outputs,
        binary_output,
        timeout_us,
        ..
    } = request;
    let named = match inputs {
        RequestInputs::Named(named) => named,
        RequestInputs::Raw(body) => vec![raw_input(io, body)?],
    };
    for given in &named {
        if !io.inputs.iter().any(|spec| spec.name == given.name) {
            return Err(InvalidRequest(format!(
                "unknown input '{}'; the model's inputs are {}",
                given.name,
                names(&io.inputs)
            )));
        }
    }
    let batching = io.batch.is_batched();
    let mut rows = None;
    let mut tensors = Vec::with_capacity(io.inputs.len());
    let mut named = named;
    for spec in &io.inputs {
        let pos = named
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| InvalidRequest(format!("missing input '{}'", spec.name)))?;
        let tensor = named.swap_remove(pos).tensor;
        check_tensor(io, spec, &tensor)?;
        if batching {
            let r = tensor.shape[0];
            match rows {
                None => rows = Some(r),
                Some(prev) if prev != r => {
                    return Err(InvalidRequest(format!(
                    "input '{}' has batch size {r} but other inputs have {prev}; all inputs must \
                         have the same first dimension",
                    spec.name
                )))
                }
                Some(_) => {}
            }
        }
        tensors.push(tensor);
    }

    let picks = if outputs.is_empty() {
        (0..io.outputs.len())
            .map(|output| OutputPick {
                output,
                binary: binary_output,
            })
            .collect()
    } else {
        outputs
            .iter()
            .map(|wanted| {
                let output = io
                    .outputs
                    .iter()
                    .position(|o| o.name == wanted.name)
                    .ok_or_else(|| {
                        InvalidRequest(format!(
                            "unknown output '{}'; the model's outputs are {}",
                            wanted.name,
                            names(&io.outputs)
                        ))
                    })?;
                Ok(OutputPick {
                    output,
                    binary: wanted.binary.unwrap_or(binary_output),
                })
            })
            .collect::<Result<_, InvalidRequest>>()?
    };

    Ok((
        ValidatedRequest {
            inputs: tensors,
            rows: rows.unwrap_or(1),
            timeout: timeout_us.filter(|&t| t > 0).map(Duration::from_micros),
        },
        picks,
    ))
}

fn check_tensor(io: &ModelIo, spec: &IoSpec, tensor: &Tensor) -> Result<(), InvalidRequest> {
    if tensor.dtype != spec.dtype {
        return Err(InvalidRequest(format!(
            "input '{}': datatype {} does not match the model's {}",
            spec.name, tensor.dtype, spec.dtype
        )));
    }
    let expected = io.full_dims(spec);
    let fits = tensor.shape.len() == expected.len()
        && tensor
            .shape
            .iter()
            .zip(&expected)
            .all(|(&given, &want)| want < 0 || given as i64 == want);
    if !fits {
        return Err(InvalidRequest(format!(
            "input '{}': shape {:?} does not match the model's {:?} (-1 is any size{})",
            spec.name,
            tensor.shape,
            expected,
            if io.batch.is_batched() {
                ", the first dimension is the batch"
            } else {
                ""
            }
        )));
    }
    if let BatchShape::Rows { max } = io.batch {
        let rows = tensor.shape[0];
        if rows == 0 || rows > max {
            return Err(InvalidRequest(format!(
                "input '{}': batch size {rows} is not between 1 and the model's max_batch_size {max}",
                spec.name
            )));
        }
    }
    Ok(())
}

/// The raw binary form: the body is the only input's data, batch size 1.
fn raw_input(io: &ModelIo, body: Bytes) -> Result<NamedTensor, InvalidRequest> {
    let [spec] = io.inputs.as_slice() else {
        return Err(InvalidRequest(format!(
            "a raw binary body (Inference-Header-Content-Length: 0) needs a model with exactly one \
             input; this one has {}",
            io.inputs.len()
        )));
    };
    let mut dims = io.full_dims(spec);
    if io.batch.is_batched() {
        dims[0] = 1;
    }
    let variable: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(_, &d)| d < 0)
        .map(|(i, _)| i)
        .collect();
    let (shape, data) = match spec.dtype {
        DataType::Bytes => {
            let shape: Vec<usize> = dims.iter().map(|&d| d.max(1) as usize).collect();
            if shape.iter().product::<usize>() != 1 {
                return Err(InvalidRequest(format!(
                    "input '{}': a raw binary BYTES body must be one element, but the input's shape \
                     is {dims:?}",
                    spec.name
                )));
            }
            (shape, TensorData::Bytes(vec![body]))
        }
        dtype => {
            let size = dtype.size().expect("fixed-size datatype");
            let fixed: usize = dims
                .iter()
                .filter(|&&d| d > 0)
                .map(|&d| d as usize)
                .product();
            let elements = body.len() / size;
            if body.len() % size != 0 {
                return Err(InvalidRequest(format!(
                    "input '{}': a raw binary body of {} bytes is not a whole number of {dtype} \
                     elements",
                    spec.name,
                    body.len()
                )));
            }
            let shape = match variable.as_slice() {
                [] => dims.iter().map(|&d| d as usize).collect(),
                [i] if fixed > 0 && elements % fixed == 0 => {
                    let mut s: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
                    s[*i] = elements / fixed;
                    s
                }
                [_] => {
                    return Err(InvalidRequest(format!(
                        "input '{}': a raw binary body of {elements} elements does not fit shape {dims:?}",
                        spec.name
                    )))
                }
                _ => {
                    return Err(InvalidRequest(format!(
                        "input '{}': shape {dims:?} has more than one variable dimension, so a raw \
                         binary body cannot be shaped; send a JSON header",
                        spec.name
                    )))
                }
            };
            (shape, TensorData::Fixed(body))
        }
    };
    let tensor = Tensor::new(spec.dtype, shape, data)
        .map_err(|e| InvalidRequest(format!("input '{}': {e}", spec.name)))?;
    Ok(NamedTensor {
        name: spec.name.clone(),
        tensor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_request;

    fn io() -> ModelIo {
        ModelIo {
            batch: BatchShape::Rows { max: 4 },
            inputs: vec![
                IoSpec {
                    name: "a".into(),
                    dtype: DataType::Fp32,
                    dims: vec![2],
                    classes: None,
                },
                IoSpec {
                    name: "b".into(),
                    dtype: DataType::Int64,
                    dims: vec![-1],
                    classes: None,
                },
            ],
            outputs: vec![IoSpec {
                name: "y".into(),
                dtype: DataType::Fp32,
                dims: vec![1],
                classes: None,
            }],
            output_index: vec![0],
        }
    }

    fn check(body: &str) -> Result<(ValidatedRequest, Vec<OutputPick>), String> {
        let req = decode_request(Bytes::from(body.to_string()), None).map_err(|e| e.to_string())?;
        validate(&io(), req).map_err(|e| e.0)
    }

    #[test]
    fn orders_inputs_and_counts_rows() {
        let (req, picks) = check(
            r#"{"inputs":[{"name":"b","shape":[2,3],"datatype":"INT64","data":[1,2,3,4,5,6]},
                {"name":"a","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}],
               "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#,
        )
        .unwrap();
        assert_eq!(req.rows, 2);
        assert_eq!(req.inputs[0].dtype, DataType::Fp32);
        assert_eq!(
            picks,
            vec![OutputPick {
                output: 0,
                binary: true
            }]
        );
    }

    #[test]
    fn mismatches_are_named() {
        let a = r#"{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]}"#;
        let b = r#"{"name":"b","shape":[1,1],"datatype":"INT64","data":[1]}"#;
        let cases = [
            (format!(r#"{{"inputs":[{a}]}}"#), "missing input 'b'"),
            (
                format!(
                    r#"{{"inputs":[{a},{b},{{"name":"c","shape":[1],"datatype":"FP32","data":[1]}}]}}"#
                ),
                "unknown input 'c'",
            ),
            (
                format!(
                    r#"{{"inputs":[{b},{{"name":"a","shape":[1,2],"datatype":"FP64","data":[1,2]}}]}}"#
                ),
                "datatype FP64 does not match the model's FP32",
            ),
            (
                format!(
                    r#"{{"inputs":[{b},{{"name":"a","shape":[1,3],"datatype":"FP32","data":[1,2,3]}}]}}"#
                ),
                "shape [1, 3] does not match",
            ),
            (
                format!(
                    r#"{{"inputs":[{b},{{"name":"a","shape":[2],"datatype":"FP32","data":[1,2]}}]}}"#
                ),
                "shape [2] does not match",
            ),
            (
                format!(
                    r#"{{"inputs":[{b},{{"name":"a","shape":[5,2],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,0]}}]}}"#
                ),
                "batch size 5",
            ),
            (
                format!(
                    r#"{{"inputs":[{b},{{"name":"a","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}}]}}"#
                ),
                "all inputs must have the same first dimension",
            ),
            (
                format!(r#"{{"inputs":[{a},{b}],"outputs":[{{"name":"nope"}}]}}"#),
                "unknown output 'nope'",
            ),
        ];
        for (body, expected) in cases {
            let err = check(&body).err().unwrap_or_default();
            assert!(err.contains(expected), "{body}: {err:?}");
        }
    }

    #[test]
    fn raw_body_is_shaped_from_the_single_input() {
        let mut io = io();
        io.inputs.remove(1);
        let body: Vec<u8> = [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let req = decode_request(Bytes::from(body), Some(0)).unwrap();
        let (req, picks) = validate(&io, req).unwrap();
        assert_eq!(req.inputs[0].shape, vec![1, 2]);
        assert!(picks[0].binary);
        let req = decode_request(Bytes::from(vec![0u8; 12]), Some(0)).unwrap();
        assert!(validate(&io, req).is_err());
        let req = decode_request(Bytes::from(vec![0u8; 8]), Some(0)).unwrap();
        assert!(validate(&self::io(), req)
            .unwrap_err()
            .0
            .contains("exactly one input"));
    }
}
