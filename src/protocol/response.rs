//! Encoding an inference response: JSON, or a JSON header followed by binary tensors.

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::{InferResponse, ResponseOutput};
use crate::tensor::{DataType, Element, Tensor, TensorData};

/// An encoded response body.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// Length of the JSON header when binary tensors follow it (the value of
    /// `Inference-Header-Content-Length`); `None` for a JSON-only body.
    pub header_len: Option<usize>,
}

/// Encodes a response. Outputs marked binary follow the JSON header in the order they appear in
/// it; the others are JSON arrays (FP16 and BF16 values as numbers, widened exactly).
pub fn encode_response(response: &InferResponse<'_>) -> EncodedResponse {
    let binary_len: usize = response
        .outputs
        .iter()
        .filter(|o| is_binary(o))
        .map(|o| o.tensor.binary_size())
        .sum();
    let json_estimate = 128 + response.outputs.len() * 96 + json_data_estimate(response);
    let mut body = Vec::with_capacity(json_estimate + binary_len);
    let header = Header {
        model_name: response.model_name,
        model_version: &response.model_version,
        id: response.id,
        outputs: response.outputs.iter().map(OutputHeader).collect(),
    };
    serde_json::to_writer(&mut body, &header).expect("serializing to a Vec cannot fail");
    let header_len = body.len();
    let mut any_binary = false;
    for output in response.outputs.iter().filter(|o| is_binary(o)) {
        any_binary = true;
        write_binary(output.tensor, &mut body);
    }
    EncodedResponse {
        body,
        header_len: any_binary.then_some(header_len),
    }
}

/// Appends a tensor in the V2 binary layout: fixed-size data as it is, each BYTES element
/// behind its 4-byte little-endian length. The gRPC front end's raw contents use it too.
pub fn write_binary(tensor: &Tensor, out: &mut Vec<u8>) {
    match &tensor.data {
        TensorData::Fixed(bytes) => out.extend_from_slice(bytes),
        TensorData::Bytes(items) => {
            for item in items {
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
        }
    }
}

fn is_binary(output: &ResponseOutput<'_>) -> bool {
    output.binary
}

fn json_data_estimate(response: &InferResponse<'_>) -> usize {
    response
        .outputs
        .iter()
        .filter(|o| !is_binary(o))
        .map(|o| o.tensor.len() * 12)
        .sum()
}

#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHeader<'a>>,
}

struct OutputHeader<'a>(&'a ResponseOutput<'a>);

impl Serialize for OutputHeader<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let out = self.0;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("name", &out.name)?;
        map.serialize_entry("datatype", out.tensor.dtype.as_str())?;
        map.serialize_entry("shape", &out.tensor.shape)?;
        let binary_data_size = is_binary(out).then(|| out.tensor.binary_size());
        if binary_data_size.is_some() || out.classes.is_some() {
            map.serialize_entry(
                "parameters",
                &OutputParameters {
                    binary_data_size,
                    classes: out.classes.as_deref(),
                },
            )?;
        }
        if binary_data_size.is_none() {
            map.serialize_entry("data", &JsonData(out.tensor))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct OutputParameters<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_data_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<&'a str>,
}

struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        match &tensor.data {
            TensorData::Bytes(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&String::from_utf8_lossy(item))?;
                }
                seq.end()
            }
            TensorData::Fixed(bytes) => match tensor.dtype {
                DataType::Bool => seq_of::<bool, S>(s, bytes),
                DataType::Uint8 => seq_of::<u8, S>(s, bytes),
                DataType::Uint16 => seq_of::<u16, S>(s, bytes),
                DataType::Uint32 => seq_of::<u32, S>(s, bytes),
                DataType::Uint64 => seq_of::<u64, S>(s, bytes),
                DataType::Int8 => seq_of::<i8, S>(s, bytes),
                DataType::Int16 => seq_of::<i16, S>(s, bytes),
                DataType::Int32 => seq_of::<i32, S>(s, bytes),
                DataType::Int64 => seq_of::<i64, S>(s, bytes),
                DataType::Fp32 => seq_of::<f32, S>(s, bytes),
                DataType::Fp64 => seq_of::<f64, S>(s, bytes),
                // Half-precision values widen to FP32 exactly; JSON has one number type.
                DataType::Fp16 => widened::<half::f16, S>(s, bytes, half::f16::to_f32),
                DataType::Bf16 => widened::<half::bf16, S>(s, bytes, half::bf16::to_f32),
                // BYTES data is serialized above as strings; an empty array keeps the JSON
                // well-formed if a future caller forgets.
                DataType::Bytes => s.serialize_seq(Some(0))?.end(),
            },
        }
    }
}

fn widened<T: Element, S: Serializer>(
    s: S,
    bytes: &[u8],
    widen: fn(T) -> f32,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(bytes.len() / T::SIZE))?;
    for chunk in bytes.chunks_exact(T::SIZE) {
        seq.serialize_element(&widen(T::read_le(chunk)))?;
    }
    seq.end()
}

fn seq_of<T: Element + Serialize, S: Serializer>(s: S, bytes: &[u8]) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(bytes.len() / T::SIZE))?;
    for chunk in bytes.chunks_exact(T::SIZE) {
        seq.serialize_element(&T::read_le(chunk))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn output<'a>(name: &'a str, tensor: &'a Tensor, binary: bool) -> ResponseOutput<'a> {
        ResponseOutput {
            name,
            tensor,
            binary,
            classes: None,
        }
    }

    #[test]
    fn json_response() {
        let p = Tensor::from_values(vec![1, 2], &[0.25f32, 0.75]).unwrap();
        let l = Tensor::from_values(vec![1], &[1i64]).unwrap();
        let s = Tensor::new(
            DataType::Bytes,
            vec![1],
            TensorData::Bytes(vec![Bytes::from("hé")]),
        )
        .unwrap();
        let resp = InferResponse {
            model_name: "m",
            model_version: "3".into(),
            id: Some("7"),
            outputs: vec![
                output("p", &p, false),
                output("l", &l, false),
                output("s", &s, false),
            ],
        };
        let enc = encode_response(&resp);
        assert_eq!(enc.header_len, None);
        let v: serde_json::Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model_name":"m","model_version":"3","id":"7","outputs":[
                {"name":"p","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]},
                {"name":"l","datatype":"INT64","shape":[1],"data":[1]},
                {"name":"s","datatype":"BYTES","shape":[1],"data":["hé"]}]})
        );
    }

    #[test]
    fn a_zipmap_output_carries_its_classes() {
        let p = Tensor::from_values(vec![1, 2], &[0.25f32, 0.75]).unwrap();
        for binary in [false, true] {
            let resp = InferResponse {
                model_name: "m",
                model_version: "1".into(),
                id: None,
                outputs: vec![ResponseOutput {
                    classes: Some(r#"["no","yes"]"#.into()),
                    ..output("p", &p, binary)
                }],
            };
            let enc = encode_response(&resp);
            let header = &enc.body[..enc.header_len.unwrap_or(enc.body.len())];
            let v: serde_json::Value = serde_json::from_slice(header).unwrap();
            let params = &v["outputs"][0]["parameters"];
            assert_eq!(params["classes"], r#"["no","yes"]"#);
            assert_eq!(params.get("binary_data_size").is_some(), binary);
        }
    }

    #[test]
    fn binary_response_follows_header_order() {
        let a = Tensor::from_values(vec![2], &[1i32, 2]).unwrap();
        let b = Tensor::from_values(vec![1], &[true]).unwrap();
        let c = Tensor::from_values(vec![1], &[3.5f64]).unwrap();
        let resp = InferResponse {
            model_name: "m",
            model_version: "1".into(),
            id: None,
            outputs: vec![
                output("a", &a, true),
                output("b", &b, false),
                output("c", &c, true),
            ],
        };
        let enc = encode_response(&resp);
        let header_len = enc.header_len.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&enc.body[..header_len]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(v["outputs"][0].get("data").is_none());
        assert_eq!(v["outputs"][1]["data"], serde_json::json!([true]));
        assert!(v["outputs"][1].get("parameters").is_none());
        let mut tail = Vec::new();
        tail.extend_from_slice(&1i32.to_le_bytes());
        tail.extend_from_slice(&2i32.to_le_bytes());
        tail.extend_from_slice(&3.5f64.to_le_bytes());
        assert_eq!(&enc.body[header_len..], &tail[..]);
    }
}
