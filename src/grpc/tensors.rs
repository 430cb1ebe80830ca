//! `ModelInferRequest` to our request and our result back to `ModelInferResponse`: the gRPC
//! counterpart of `protocol`, with the same rules and the same errors.
//!
//! Inputs come as `raw_input_contents` (the V2 binary layout, one entry per input: what
//! tritonclient and perf_analyzer send) or as typed `contents`. Raw fixed-size inputs are slices
//! of the received message, not copies. Outputs always go back as `raw_output_contents`, as
//! Triton's do, which every client reads.

use bytes::Bytes;

use super::proto;
use crate::protocol::{parse_binary_bytes, ProtocolError};
use crate::request::{
    InferRequest, NamedTensor, Parameter, Parameters, RequestInputs, RequestedOutput,
};
use crate::tensor::{element_count, DataType, Tensor, TensorData, TensorError};

use crate::protocol::limits::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};

/// Decodes a request. The message itself is already bounded by the service's decoding limit
/// (`max_body_bytes`), and nothing here allocates more than the message holds.
pub fn decode(message: proto::ModelInferRequest) -> Result<InferRequest, ProtocolError> {
    let proto::ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = message;
    crate::protocol::check_id(&id)?;
    if inputs.is_empty() {
        return Err(ProtocolError::NoInputs);
    }
    if inputs.len() > MAX_TENSORS || outputs.len() > MAX_TENSORS {
        return Err(ProtocolError::TooMany {
            what: "tensors",
            limit: MAX_TENSORS,
        });
    }
    if parameters.len() > MAX_PARAMETERS {
        return Err(ProtocolError::TooMany {
            what: "parameters",
            limit: MAX_PARAMETERS,
        });
    }
    let raw = !raw_input_contents.is_empty();
    if raw && raw_input_contents.len() != inputs.len() {
        return Err(ProtocolError::RawInputCount {
            raw: raw_input_contents.len(),
            inputs: inputs.len(),
        });
    }
    let mut parameters = convert_parameters(parameters)?;
    let timeout_us = match parameters.remove("timeout") {
        None => None,
        Some(p) => Some(p.as_u64().ok_or_else(|| ProtocolError::Parameter {
            name: "timeout".into(),
            reason: format!("must be a non-negative integer (microseconds), got {p}"),
        })?),
    };
    let mut decoded: Vec<NamedTensor> = Vec::with_capacity(inputs.len());
    let mut raw_contents = raw_input_contents.into_iter();
    for input in inputs {
        let tensor = decode_input(&input, raw_contents.next())?;
        if decoded.iter().any(|t| t.name == input.name) {
            return Err(ProtocolError::DuplicateInput(input.name));
        }
        decoded.push(NamedTensor {
            name: input.name,
            tensor,
        });
    }
    let mut requested: Vec<RequestedOutput> = Vec::with_capacity(outputs.len());
    for output in outputs {
        if let Some(choice) = output
            .parameters
            .get("classification")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            if !matches!(
                choice,
                proto::infer_parameter::ParameterChoice::Int64Param(0)
                    | proto::infer_parameter::ParameterChoice::Uint64Param(0)
            ) {
                return Err(ProtocolError::Classification(output.name));
            }
        }
        if requested.iter().any(|o| o.name == output.name) {
            return Err(ProtocolError::DuplicateOutput(output.name));
        }
        requested.push(RequestedOutput {
            name: output.name,
            binary: Some(true),
        });
    }
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        parameters,
        inputs: RequestInputs::Named(decoded),
        outputs: requested,
        binary_output: true,
        timeout_us,
    })
}

fn convert_parameters(
    map: std::collections::HashMap<String, proto::InferParameter>,
) -> Result<Parameters, ProtocolError> {
    use proto::infer_parameter::ParameterChoice as P;
    let mut out = Parameters::new();
    for (name, value) in map {
        let value = match value.parameter_choice {
            Some(P::BoolParam(b)) => Parameter::Bool(b),
            Some(P::Int64Param(v)) => Parameter::Int(v),
            Some(P::Uint64Param(v)) => Parameter::Uint(v),
            Some(P::DoubleParam(v)) => Parameter::Float(v),
            Some(P::StringParam(s)) => Parameter::String(s),
            None => Parameter::Null,
        };
        out.insert(name, value);
    }
    Ok(out)
}

fn decode_input(
    input: &proto::model_infer_request::InferInputTensor,
    raw: Option<Bytes>,
) -> Result<Tensor, ProtocolError> {
    let name = || input.name.clone();
    let dtype = DataType::parse(&input.datatype).ok_or_else(|| ProtocolError::UnknownDatatype {
        input: name(),
        datatype: input.datatype.clone(),
    })?;
    if input.shape.len() > MAX_RANK {
        return Err(ProtocolError::Data {
            input: name(),
            reason: format!(
                "shape has {} dimensions; at most {MAX_RANK}",
                input.shape.len()
            ),
        });
    }
    let mut shape = Vec::with_capacity(input.shape.len());
    for &dim in &input.shape {
        let dim =
            usize::try_from(dim).map_err(|_| ProtocolError::NegativeDim { input: name(), dim })?;
        shape.push(dim);
    }
    let expected = element_count(&shape).ok_or_else(|| ProtocolError::Tensor {
        input: name(),
        source: TensorError::Overflow(shape.clone()),
    })?;
    let data_err = |reason: String| ProtocolError::Data {
        input: name(),
        reason,
    };
    let data = match (raw, &input.contents) {
        (Some(_), Some(_)) => {
            return Err(data_err(
                "has 'contents' while the request carries raw_input_contents".into(),
            ))
        }
        (Some(bytes), None) => match dtype {
            DataType::Bytes => {
                TensorData::Bytes(parse_binary_bytes(&bytes, expected).map_err(data_err)?)
            }
            _ => TensorData::Fixed(bytes),
        },
        (None, Some(contents)) => from_contents(dtype, contents, expected).map_err(data_err)?,
        (None, None) => return Err(ProtocolError::NoData { input: name() }),
    };
    Tensor::new(dtype, shape, data).map_err(|source| ProtocolError::Tensor {
        input: name(),
        source,
    })
}

/// Typed `contents` into the little-endian layout, each value checked against its datatype's
/// range (INT8 values travel in `int_contents`, 32 bits wide). The field used must be the
/// datatype's and no other may hold values.
fn from_contents(
    dtype: DataType,
    c: &proto::InferTensorContents,
    expected: usize,
) -> Result<TensorData, String> {
    let used = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let field = match dtype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!(
                "datatype {dtype} has no typed contents; send it in raw_input_contents"
            ))
        }
    };
    if let Some((other, _)) = used.iter().find(|(f, n)| *f != field && *n > 0) {
        return Err(format!("datatype {dtype} is sent in {field}, not {other}"));
    }
    let given = used
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(0, |(_, n)| *n);
    if given != expected {
        return Err(format!(
            "{field} holds {given} values; its shape holds {expected}"
        ));
    }
    fn narrow<T: TryFrom<W>, W: Copy + std::fmt::Display>(
        values: &[W],
        dtype: DataType,
        write: impl Fn(T, &mut Vec<u8>),
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(values.len() * dtype.size().unwrap_or(1));
        for &v in values {
            let t = T::try_from(v).map_err(|_| format!("value {v} is out of range for {dtype}"))?;
            write(t, &mut out);
        }
        Ok(out)
    }
    let bytes = match dtype {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Int8 => {
            narrow::<i8, i32>(&c.int_contents, dtype, |v, o| o.extend(v.to_le_bytes()))?
        }
        DataType::Int16 => {
            narrow::<i16, i32>(&c.int_contents, dtype, |v, o| o.extend(v.to_le_bytes()))?
        }
        DataType::Int32 => c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint8 => {
            narrow::<u8, u32>(&c.uint_contents, dtype, |v, o| o.extend(v.to_le_bytes()))?
        }
        DataType::Uint16 => {
            narrow::<u16, u32>(&c.uint_contents, dtype, |v, o| o.extend(v.to_le_bytes()))?
        }
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Bytes => return Ok(TensorData::Bytes(c.bytes_contents.clone())),
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above"),
    };
    Ok(TensorData::Fixed(Bytes::from(bytes)))
}

/// One output in the V2 binary layout: fixed-size data as it is (no copy), BYTES elements each
/// behind a 4-byte little-endian length.
pub fn raw_output(tensor: &Tensor) -> Bytes {
    match &tensor.data {
        TensorData::Fixed(bytes) => bytes.clone(),
        TensorData::Bytes(_) => {
            let mut out = Vec::with_capacity(tensor.binary_size());
            crate::protocol::write_binary(tensor, &mut out);
            Bytes::from(out)
        }
    }
}

/// The response to a finished inference.
pub fn encode(result: &crate::routing::InferResult, id: String) -> proto::ModelInferResponse {
    let picked: Vec<_> = result.picked().collect();
    let mut outputs = Vec::with_capacity(picked.len());
    let mut raw = Vec::with_capacity(picked.len());
    for (name, tensor, _) in picked {
        let mut parameters = std::collections::HashMap::new();
        if let Some(classes) = result.version.io.classes(name) {
            parameters.insert(
                "classes".to_string(),
                proto::InferParameter {
                    parameter_choice: Some(proto::infer_parameter::ParameterChoice::StringParam(
                        classes.to_json(),
                    )),
                },
            );
        }
        outputs.push(proto::model_infer_response::InferOutputTensor {
            name: name.to_string(),
            datatype: tensor.dtype.as_str().to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters,
            contents: None,
        });
        raw.push(raw_output(tensor));
    }
    proto::ModelInferResponse {
        model_name: result.version.model.clone(),
        model_version: result.version.version.to_string(),
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents: None,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> proto::ModelInferRequest {
        proto::ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn tensor(r: &InferRequest, i: usize) -> &Tensor {
        match &r.inputs {
            RequestInputs::Named(v) => &v[i].tensor,
            RequestInputs::Raw(_) => panic!("named inputs"),
        }
    }

    #[test]
    fn raw_inputs_are_slices_and_bytes_are_split() {
        let data = Bytes::from(vec![0u8; 16]);
        let strings = Bytes::from_static(b"\x02\0\0\0hi\x00\0\0\0");
        let r = decode(request(
            vec![input("x", "FP32", &[2, 2]), input("s", "BYTES", &[2])],
            vec![data.clone(), strings],
        ))
        .unwrap();
        assert_eq!(tensor(&r, 0).data, TensorData::Fixed(data));
        assert_eq!(
            tensor(&r, 1).data,
            TensorData::Bytes(vec![Bytes::from_static(b"hi"), Bytes::new()])
        );
        assert!(r.binary_output);
    }

    #[test]
    fn typed_contents_are_checked_against_the_datatype() {
        let mut x = input("x", "INT8", &[3]);
        x.contents = Some(proto::InferTensorContents {
            int_contents: vec![1, -2, 127],
            ..Default::default()
        });
        let r = decode(request(vec![x.clone()], vec![])).unwrap();
        assert_eq!(tensor(&r, 0).to_values::<i8>().unwrap(), vec![1, -2, 127]);

        x.contents.as_mut().unwrap().int_contents[2] = 128;
        let e = decode(request(vec![x.clone()], vec![])).unwrap_err();
        assert!(e.to_string().contains("out of range for INT8"), "{e}");

        x.contents = Some(proto::InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        });
        let e = decode(request(vec![x], vec![])).unwrap_err();
        assert!(e.to_string().contains("not fp32_contents"), "{e}");
    }

    #[test]
    fn counts_and_sizes_are_refused_with_their_reason() {
        let e = decode(request(vec![input("x", "FP32", &[2])], vec![])).unwrap_err();
        assert!(matches!(e, ProtocolError::NoData { .. }), "{e}");
        let e = decode(request(
            vec![input("x", "FP32", &[2]), input("y", "FP32", &[2])],
            vec![Bytes::from(vec![0u8; 8])],
        ))
        .unwrap_err();
        assert!(
            matches!(e, ProtocolError::RawInputCount { raw: 1, inputs: 2 }),
            "{e}"
        );
        let e = decode(request(
            vec![input("x", "FP32", &[3])],
            vec![Bytes::from(vec![0u8; 8])],
        ))
        .unwrap_err();
        assert!(matches!(e, ProtocolError::Tensor { .. }), "{e}");
        let e = decode(request(
            vec![input("x", "FP32", &[-1])],
            vec![Bytes::from(vec![0u8; 8])],
        ))
        .unwrap_err();
        assert!(matches!(e, ProtocolError::NegativeDim { .. }), "{e}");
        let e = decode(request(
            vec![input("x", "FP32", &[i64::MAX, i64::MAX])],
            vec![Bytes::new()],
        ))
        .unwrap_err();
        assert!(matches!(e, ProtocolError::Tensor { .. }), "{e}");
        let e = decode(request(vec![input("x", "FP99", &[1])], vec![Bytes::new()])).unwrap_err();
        assert!(matches!(e, ProtocolError::UnknownDatatype { .. }), "{e}");
        let mut dup = request(
            vec![input("x", "FP32", &[1]), input("x", "FP32", &[1])],
            vec![Bytes::from(vec![0u8; 4]), Bytes::from(vec![0u8; 4])],
        );
        let e = decode(dup.clone()).unwrap_err();
        assert!(matches!(e, ProtocolError::DuplicateInput(_)), "{e}");
        dup.inputs.pop();
        dup.raw_input_contents.pop();
        dup.outputs = vec![
            InferRequestedOutputTensor {
                name: "y".into(),
                parameters: Default::default(),
            };
            2
        ];
        let e = decode(dup).unwrap_err();
        assert!(matches!(e, ProtocolError::DuplicateOutput(_)), "{e}");
    }
}
