//! Decoding an inference request body: JSON alone, JSON followed by binary tensors, or raw binary.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::bounded;
use super::data::{parse_binary_bytes, parse_json_data};
use super::ProtocolError;
use crate::request::{
    InferRequest, NamedTensor, Parameter, Parameters, RequestInputs, RequestedOutput,
};
use crate::tensor::{element_count, DataType, Tensor, TensorData, TensorError};

/// Decodes a request body. `header_len` is the value of `Inference-Header-Content-Length`, if
/// the request had one: the JSON is then the first `header_len` bytes and binary tensors follow
/// it; `Some(0)` is the raw binary form.
pub fn decode_request(
    body: Bytes,
    header_len: Option<usize>,
) -> Result<InferRequest, ProtocolError> {
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(ProtocolError::HeaderLength {
            header: json_len,
            body: body.len(),
        });
    }
    if header_len == Some(0) {
        return Ok(InferRequest {
            id: None,
            parameters: Parameters::new(),
            inputs: RequestInputs::Raw(body),
            outputs: Vec::new(),
            binary_output: true,
            timeout_us: None,
        });
    }
    let header: Header<'_> = serde_json::from_slice(&body[..json_len])?;
    if let Some(id) = &header.id {
        super::check_id(id)?;
    }
    let mut binary = body.slice(json_len..);

    let mut parameters = header.parameters.unwrap_or_default();
    let binary_output = take_bool(&mut parameters, "binary_data_output")?.unwrap_or(false);
    let timeout_us = take_u64(&mut parameters, "timeout")?;

    if header.inputs.is_empty() {
        return Err(ProtocolError::NoInputs);
    }
    let mut inputs: Vec<NamedTensor> = Vec::with_capacity(header.inputs.len());
    for input in header.inputs {
        let tensor = decode_input(&input, &body, &mut binary)?;
        if inputs.iter().any(|t| t.name == input.name) {
            return Err(ProtocolError::DuplicateInput(input.name.into_owned()));
        }
        inputs.push(NamedTensor {
            name: input.name.into_owned(),
            tensor,
        });
    }
    if !binary.is_empty() {
        return Err(ProtocolError::BinaryTrailing(binary.len()));
    }

    let mut outputs = Vec::new();
    for output in header.outputs.unwrap_or_default() {
        let mut params = output.parameters.unwrap_or_default();
        let binary = take_bool(&mut params, "binary_data")?;
        if let Some(classes) = params.get("classification") {
            if classes.as_u64() != Some(0) {
                return Err(ProtocolError::Classification(output.name));
            }
        }
        if outputs
            .iter()
            .any(|o: &RequestedOutput| o.name == output.name)
        {
            return Err(ProtocolError::DuplicateOutput(output.name));
        }
        outputs.push(RequestedOutput {
            name: output.name,
            binary,
        });
    }

    Ok(InferRequest {
        id: header.id,
        parameters,
        inputs: RequestInputs::Named(inputs),
        outputs,
        binary_output,
        timeout_us,
    })
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "bounded::parameters")]
    parameters: Option<Parameters>,
    #[serde(borrow, deserialize_with = "bounded::tensors")]
    inputs: Vec<InputHeader<'a>>,
    #[serde(default, deserialize_with = "bounded::optional_tensors")]
    outputs: Option<Vec<OutputHeader>>,
}

#[derive(Deserialize)]
struct InputHeader<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(deserialize_with = "bounded::shape")]
    shape: Vec<i64>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(default, deserialize_with = "bounded::parameters")]
    parameters: Option<Parameters>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default, deserialize_with = "bounded::parameters")]
    parameters: Option<Parameters>,
}

fn decode_input(
    input: &InputHeader<'_>,
    whole: &Bytes,
    binary: &mut Bytes,
) -> Result<Tensor, ProtocolError> {
    let name = || input.name.to_string();
    let dtype = DataType::parse(&input.datatype).ok_or_else(|| ProtocolError::UnknownDatatype {
        input: name(),
        datatype: input.datatype.to_string(),
    })?;
    let mut shape = Vec::with_capacity(input.shape.len());
    for &dim in &input.shape {
        let dim =
            usize::try_from(dim).map_err(|_| ProtocolError::NegativeDim { input: name(), dim })?;
        shape.push(dim);
    }
    let binary_size = match &input.parameters {
        Some(params) => match params.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| ProtocolError::Parameter {
                name: "binary_data_size".into(),
                reason: format!(
                    "input '{}': must be a non-negative integer, got {v}",
                    input.name
                ),
            })? as usize),
        },
        None => None,
    };
    let data_err = |reason: String| ProtocolError::Data {
        input: name(),
        reason,
    };
    let data = match (input.data, binary_size) {
        (Some(_), Some(_)) => return Err(ProtocolError::DataAndBinary { input: name() }),
        (None, None) => return Err(ProtocolError::NoData { input: name() }),
        (Some(raw), None) => {
            let Some(expected) = element_count(&shape) else {
                return Err(ProtocolError::Tensor {
                    input: name(),
                    source: TensorError::Overflow(shape),
                });
            };
            let data = parse_json_data(raw, dtype, expected, whole).map_err(data_err)?;
            let given = match (&data, dtype.size()) {
                (TensorData::Fixed(b), Some(size)) => b.len() / size,
                (TensorData::Fixed(b), None) => b.len(),
                (TensorData::Bytes(items), _) => items.len(),
            };
            if given != expected {
                return Err(ProtocolError::Tensor {
                    input: name(),
                    source: TensorError::ElementCount {
                        shape,
                        expected,
                        given,
                    },
                });
            }
            data
        }
        (None, Some(size)) => {
            if size > binary.len() {
                return Err(ProtocolError::BinaryOverrun {
                    input: name(),
                    size,
                });
            }
            let chunk = binary.split_to(size);
            match dtype {
                DataType::Bytes => {
                    let Some(expected) = element_count(&shape) else {
                        return Err(ProtocolError::Tensor {
                            input: name(),
                            source: TensorError::Overflow(shape),
                        });
                    };
                    TensorData::Bytes(parse_binary_bytes(&chunk, expected).map_err(data_err)?)
                }
                _ => TensorData::Fixed(chunk),
            }
        }
    };
    Tensor::new(dtype, shape, data).map_err(|source| ProtocolError::Tensor {
        input: name(),
        source,
    })
}

fn take_bool(params: &mut Parameters, name: &str) -> Result<Option<bool>, ProtocolError> {
    match params.remove(name) {
        None | Some(Parameter::Null) => Ok(None),
        Some(Parameter::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(ProtocolError::Parameter {
            name: name.into(),
            reason: format!("must be a boolean, got {other}"),
        }),
    }
}

fn take_u64(params: &mut Parameters, name: &str) -> Result<Option<u64>, ProtocolError> {
    match params.remove(name) {
        None | Some(Parameter::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ProtocolError::Parameter {
                name: name.into(),
                reason: format!("must be a non-negative integer, got {v}"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(req: &InferRequest) -> &[NamedTensor] {
        match &req.inputs {
            RequestInputs::Named(n) => n,
            RequestInputs::Raw(_) => panic!("named inputs expected"),
        }
    }

    #[test]
    fn json_request() {
        let body = br#"{"id":"42","parameters":{"binary_data_output":true,"timeout":1000,"x":"y"},
            "inputs":[{"name":"a","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}],
            "outputs":[{"name":"o","parameters":{"binary_data":false}}]}"#;
        let req = decode_request(Bytes::from_static(body), None).unwrap();
        assert_eq!(req.id.as_deref(), Some("42"));
        assert!(req.binary_output);
        assert_eq!(req.timeout_us, Some(1000));
        assert_eq!(
            req.parameters.get("x"),
            Some(&Parameter::String("y".into()))
        );
        let inputs = named(&req);
        assert_eq!(
            inputs[0].tensor.to_values::<i32>().unwrap(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(req.outputs[0].binary, Some(false));
    }

    #[test]
    fn binary_request() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"hi");
        let req = decode_request(Bytes::from(body), Some(json.len())).unwrap();
        let inputs = named(&req);
        assert_eq!(
            inputs[0].tensor.to_values::<f32>().unwrap(),
            vec![1.5, -2.0]
        );
        assert_eq!(
            inputs[1].tensor.data,
            TensorData::Bytes(vec![Bytes::from_static(b"hi")])
        );
    }

    #[test]
    fn binary_errors() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0; 4]);
        let err = decode_request(Bytes::from(body.clone()), Some(json.len())).unwrap_err();
        assert!(matches!(err, ProtocolError::BinaryOverrun { .. }), "{err}");
        body.extend_from_slice(&[0; 8]);
        let err = decode_request(Bytes::from(body.clone()), Some(json.len())).unwrap_err();
        assert!(matches!(err, ProtocolError::BinaryTrailing(4)), "{err}");
        let err = decode_request(Bytes::from(body), Some(10_000)).unwrap_err();
        assert!(matches!(err, ProtocolError::HeaderLength { .. }), "{err}");
    }

    #[test]
    fn raw_binary_request() {
        let req = decode_request(Bytes::from_static(&[1, 2, 3, 4]), Some(0)).unwrap();
        assert!(matches!(req.inputs, RequestInputs::Raw(ref b) if b.len() == 4));
        assert!(req.binary_output);
    }

    #[test]
    fn malformed_requests() {
        let cases: &[(&str, &str)] = &[
            ("{", "malformed request JSON"),
            (r#"{"inputs":[]}"#, "no inputs"),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP99","data":[1]}]}"#,
                "unknown datatype",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "holds 3 elements",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#,
                "neither 'data'",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":["x"]}]}"#,
                "expected INT32",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]},{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "more than once",
            ),
            (
                r#"{"parameters":{"binary_data_output":"yes"},"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "must be a boolean",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"o","parameters":{"classification":2}}]}"#,
                "classification",
            ),
        ];
        for (body, expected) in cases {
            let err = decode_request(Bytes::from(body.to_string()), None).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
    }

    /// A declared shape sizes nothing before the data backs it: these once reserved terabytes
    /// (BYTES) or overflowed and printed a saturated element count.
    #[test]
    fn huge_declared_shapes_allocate_nothing() {
        let cases: &[(&str, &str)] = &[
            (
                r#"[1099511627776,1]"#,
                "holds 1099511627776 elements, but 1 were given",
            ),
            (
                r#"[8,134217728]"#,
                "holds 1073741824 elements, but 1 were given",
            ),
            (
                r#"[4294967296,4294967296]"#,
                "shape [4294967296, 4294967296] is too large",
            ),
        ];
        for datatype in ["BYTES", "FP32", "INT8", "BOOL"] {
            let data = if datatype == "BYTES" {
                r#"["a"]"#
            } else {
                "[1]"
            };
            for (shape, expected) in cases {
                let body = format!(
                    r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
                );
                let err = decode_request(Bytes::from(body), None)
                    .unwrap_err()
                    .to_string();
                let expected = if datatype == "BOOL" && !expected.contains("too large") {
                    "expected BOOL elements"
                } else {
                    expected
                };
                assert!(err.contains(expected), "{datatype} {shape}: {err}");
                assert!(!err.contains("18446744073709551615"), "{err}");
            }
        }
    }

    #[test]
    fn unescaped_strings_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["plain","esc\"aped"]}]}"#,
        );
        let req = decode_request(body.clone(), None).unwrap();
        let TensorData::Bytes(items) = &named(&req)[0].tensor.data else {
            panic!("strings expected")
        };
        assert_eq!(items[0], Bytes::from_static(b"plain"));
        assert_eq!(items[1], Bytes::from_static(b"esc\"aped"));
        let inside = |b: &Bytes| {
            let start = body.as_ptr() as usize;
            (start..start + body.len()).contains(&(b.as_ptr() as usize))
        };
        assert!(inside(&items[0]), "the plain string borrows the body");
        assert!(
            !inside(&items[1]),
            "the escaped one is decoded into its own buffer"
        );
    }
}
