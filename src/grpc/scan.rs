//! A walk over a raw protobuf message before prost decodes it: every count a client chooses
//! (tensors, dimensions, parameters, typed values, files) is checked against its limit, and the
//! bytes the decoded message will hold are estimated, so that neither a count nor the decoded
//! size is ever known only after the allocation it sizes.
//!
//! prost decodes a repeated field by pushing one element at a time: a 2-byte empty entry of
//! `inputs` becomes a struct of several hundred bytes, and an empty `bytes_contents` element a
//! 32-byte handle, so a message made only of such entries decodes to a hundred times its size.
//! The walk reads only the wire format (tags, varints, lengths) and allocates nothing; what it
//! refuses never reaches prost. It knows the shape of the request messages of
//! `inference.GRPCInferenceService` (field numbers as in `proto/inference.proto`); fields it does
//! not know are skipped, as prost skips them.

use std::mem::size_of;

use bytes::Bytes;

use super::proto;
use crate::protocol::limits::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};
use crate::protocol::ProtocolError;
use crate::service::ApiError;

/// The largest message of a call that carries only names (metadata, config, statistics, index,
/// unload, health): far more than any real one, small enough that its decoded form is trivial.
pub const SMALL_MESSAGE_BYTES: usize = 64 << 10;

/// Most files one repository load may carry (`file:<version>/<name>` parameters).
pub const MAX_LOAD_FILES: usize = 1024;

/// What a method's request message is, for the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ModelInferRequest` (`ModelInfer`, and each message of `ModelStreamInfer`).
    Infer,
    /// `RepositoryModelLoadRequest`: model files as bytes parameters.
    Load,
    /// Every other request: names, versions and a few flags.
    Small,
}

impl Kind {
    /// The kind of a gRPC method path (`/inference.GRPCInferenceService/<Method>`).
    pub fn of_path(path: &str) -> Kind {
        match path.rsplit('/').next().unwrap_or("") {
            "ModelInfer" | "ModelStreamInfer" => Kind::Infer,
            "RepositoryModelLoad" => Kind::Load,
            _ => Kind::Small,
        }
    }
}

/// Checks a message of `kind` and returns the bytes its decoded form will hold (the message
/// buffer itself not included), or why it is refused.
pub fn check(kind: Kind, message: &[u8]) -> Result<usize, ApiError> {
    match kind {
        Kind::Infer => infer_request(message),
        Kind::Load => load_request(message),
        Kind::Small => small_request(message),
    }
}

/// A Vec grown by pushing may hold twice what it needs.
const GROWTH: usize = 2;

/// A map entry: the key and value, and the table's control bytes and spare room.
fn map_entry<V>() -> usize {
    GROWTH * (size_of::<String>() + size_of::<V>() + 8)
}

fn malformed(reason: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("malformed protobuf message: {reason}"))
}

fn too_many(what: &'static str, limit: usize) -> ApiError {
    ApiError::Protocol(ProtocolError::TooMany { what, limit })
}

/// One field as it is on the wire.
enum Wire<'a> {
    Varint,
    Fixed64,
    Fixed32,
    Len(&'a [u8]),
}

impl Wire<'_> {
    fn name(&self) -> &'static str {
        match self {
            Wire::Varint => "a varint",
            Wire::Fixed64 => "a 64-bit value",
            Wire::Fixed32 => "a 32-bit value",
            Wire::Len(_) => "a length-delimited value",
        }
    }
}

/// Fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(malformed("a varint runs past the end"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| malformed("a field runs past the end of its message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next field, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ApiError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n > 0 && n < (1 << 29))
            .ok_or_else(|| malformed(format!("field number {} is invalid", key >> 3)))?;
        let wire = match key & 7 {
            0 => {
                self.varint()?;
                Wire::Varint
            }
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| malformed("a length does not fit in memory"))?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            other => {
                return Err(malformed(format!(
                    "field {number} has wire type {other}, which these messages never use"
                )))
            }
        };
        Ok(Some((number, wire)))
    }
}

/// The bytes of a length-delimited field, or an error naming what it should have been.
fn len<'a>(wire: Wire<'a>, what: &str) -> Result<&'a [u8], ApiError> {
    match wire {
        Wire::Len(bytes) => Ok(bytes),
        other => Err(malformed(format!(
            "{what} is {}, not a length-delimited value",
            other.name()
        ))),
    }
}

/// A string field: checked for UTF-8 here, so prost's own check never has to refuse it.
fn string<'a>(wire: Wire<'a>, what: &str) -> Result<&'a str, ApiError> {
    std::str::from_utf8(len(wire, what)?).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

/// A `map<string, V>` entry whose value is checked by `value`; the key must be UTF-8.
fn map_field(
    bytes: &[u8],
    what: &str,
    mut value: impl FnMut(Wire<'_>) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let mut fields = Fields::new(bytes);
    while let Some((number, wire)) = fields.next()? {
        match number {
            1 => {
                string(wire, what)?;
            }
            2 => value(wire)?,
            _ => {}
        }
    }
    Ok(())
}

/// `InferParameter` as a map value: a oneof of scalars and a string (field 3).
fn infer_parameter(wire: Wire<'_>) -> Result<(), ApiError> {
    let mut fields = Fields::new(len(wire, "a parameter")?);
    while let Some((number, wire)) = fields.next()? {
        if number == 3 {
            string(wire, "a string parameter")?;
        }
    }
    Ok(())
}

/// A repeated scalar field as one packed run or as single elements: how many elements it adds.
fn scalars(wire: Wire<'_>, width: Width) -> Result<usize, ApiError> {
    match (wire, width) {
        (Wire::Len(bytes), Width::Varint) => Ok(bytes.iter().filter(|&&b| b & 0x80 == 0).count()),
        (Wire::Len(bytes), Width::Fixed(n)) => {
            if bytes.len() % n != 0 {
                return Err(malformed(format!(
                    "a packed run of {n}-byte values is {} bytes long",
                    bytes.len()
                )));
            }
            Ok(bytes.len() / n)
        }
        (Wire::Varint, Width::Varint)
        | (Wire::Fixed32, Width::Fixed(4))
        | (Wire::Fixed64, Width::Fixed(8)) => Ok(1),
        (other, _) => Err(malformed(format!(
            "a repeated value is {}, which its type never is",
            other.name()
        ))),
    }
}

#[derive(Clone, Copy)]
enum Width {
    Varint,
    Fixed(usize),
}

/// What one `InferInputTensor` adds.
struct Input<'a> {
    datatype: &'a str,
    /// Typed values, by their size in memory (the decoded vectors, then the tensor built from
    /// them).
    value_bytes: usize,
    /// Elements of `bytes_contents`.
    byte_elements: usize,
    parameters: usize,
}

fn input(bytes: &[u8]) -> Result<Input<'_>, ApiError> {
    let mut out = Input {
        datatype: "",
        value_bytes: 0,
        byte_elements: 0,
        parameters: 0,
    };
    let mut dims = 0usize;
    let mut fields = Fields::new(bytes);
    while let Some((number, wire)) = fields.next()? {
        match number {
            1 => {
                string(wire, "an input's name")?;
            }
            2 => out.datatype = string(wire, "an input's datatype")?,
            3 => {
                dims += scalars(wire, Width::Varint)?;
                if dims > MAX_RANK {
                    return Err(too_many("dimensions in one shape", MAX_RANK));
                }
            }
            4 => {
                out.parameters += 1;
                if out.parameters > MAX_PARAMETERS {
                    return Err(too_many("parameters", MAX_PARAMETERS));
                }
                map_field(len(wire, "an input parameter")?, "a parameter name", |w| {
                    infer_parameter(w)
                })?;
            }
            5 => contents(len(wire, "an input's contents")?, &mut out)?,
            _ => {}
        }
    }
    Ok(out)
}

/// `InferTensorContents`: fields 1–7 are repeated scalars, 8 is repeated bytes.
fn contents(bytes: &[u8], into: &mut Input<'_>) -> Result<(), ApiError> {
    let mut fields = Fields::new(bytes);
    while let Some((number, wire)) = fields.next()? {
        let (width, size) = match number {
            1 => (Width::Varint, 1),   // bool
            2 => (Width::Varint, 4),   // int32
            3 => (Width::Varint, 8),   // int64
            4 => (Width::Varint, 4),   // uint32
            5 => (Width::Varint, 8),   // uint64
            6 => (Width::Fixed(4), 4), // float
            7 => (Width::Fixed(8), 8), // double
            8 => {
                len(wire, "an element of bytes_contents")?;
                into.byte_elements += 1;
                continue;
            }
            _ => continue,
        };
        let n = scalars(wire, width)?;
        // Decoded into a vector grown by pushing, then written into the tensor's buffer.
        into.value_bytes = into
            .value_bytes
            .saturating_add(n.saturating_mul(size * (GROWTH + 1)));
    }
    Ok(())
}

/// `InferRequestedOutputTensor`: a name and parameters.
fn output(bytes: &[u8]) -> Result<usize, ApiError> {
    let mut parameters = 0usize;
    let mut fields = Fields::new(bytes);
    while let Some((number, wire)) = fields.next()? {
        match number {
            1 => {
                string(wire, "an output's name")?;
            }
            2 => {
                parameters += 1;
                if parameters > MAX_PARAMETERS {
                    return Err(too_many("parameters", MAX_PARAMETERS));
                }
                map_field(len(wire, "an output parameter")?, "a parameter name", |w| {
                    infer_parameter(w)
                })?;
            }
            _ => {}
        }
    }
    Ok(parameters)
}

/// `ModelInferRequest`.
fn infer_request(message: &[u8]) -> Result<usize, ApiError> {
    let (mut inputs, mut outputs, mut parameters) = (0usize, 0usize, 0usize);
    let mut datatypes: Vec<&str> = Vec::new();
    let mut raw: Vec<usize> = Vec::new();
    let mut estimate = size_of::<proto::ModelInferRequest>();
    let mut fields = Fields::new(message);
    while let Some((number, wire)) = fields.next()? {
        match number {
            1 | 2 => {
                string(wire, "the model name or version")?;
            }
            3 => {
                let id = string(wire, "the request id")?;
                crate::protocol::check_id(id)?;
            }
            4 => {
                parameters += 1;
                if parameters > MAX_PARAMETERS {
                    return Err(too_many("parameters", MAX_PARAMETERS));
                }
                map_field(len(wire, "a request parameter")?, "a parameter name", |w| {
                    infer_parameter(w)
                })?;
            }
            5 => {
                inputs += 1;
                if inputs > MAX_TENSORS {
                    return Err(too_many("tensors", MAX_TENSORS));
                }
                let i = input(len(wire, "an input")?)?;
                estimate = estimate
                    .saturating_add(
                        GROWTH * size_of::<proto::model_infer_request::InferInputTensor>(),
                    )
                    .saturating_add(i.value_bytes)
                    // A handle in prost's vector, then one in the tensor's.
                    .saturating_add(
                        i.byte_elements
                            .saturating_mul((GROWTH + 1) * size_of::<Bytes>()),
                    )
                    .saturating_add(i.parameters * map_entry::<proto::InferParameter>());
                datatypes.push(i.datatype);
            }
            6 => {
                outputs += 1;
                if outputs > MAX_TENSORS {
                    return Err(too_many("tensors", MAX_TENSORS));
                }
                let p = output(len(wire, "an output")?)?;
                estimate = estimate
                    .saturating_add(
                        GROWTH
                            * size_of::<proto::model_infer_request::InferRequestedOutputTensor>(),
                    )
                    .saturating_add(p * map_entry::<proto::InferParameter>());
            }
            7 => {
                if raw.len() == MAX_TENSORS {
                    return Err(too_many("raw_input_contents entries", MAX_TENSORS));
                }
                raw.push(len(wire, "an entry of raw_input_contents")?.len());
            }
            _ => {}
        }
    }
    estimate = estimate
        .saturating_add(parameters * map_entry::<proto::InferParameter>())
        .saturating_add(raw.len() * GROWTH * size_of::<Bytes>())
        // Every string is copied out of the message once.
        .saturating_add(message.len().min(usize::MAX / 2));
    // Raw BYTES elements are split into one handle per element (each at least a 4-byte length):
    // the only raw input that decodes larger than it arrives. The k-th raw entry is the k-th
    // input's, as the decoder pairs them.
    for (k, &bytes) in raw.iter().enumerate() {
        if datatypes.get(k).is_some_and(|d| *d == "BYTES") {
            estimate = estimate.saturating_add((bytes / 4).saturating_mul(size_of::<Bytes>()));
        }
    }
    Ok(estimate)
}

/// `RepositoryModelLoadRequest`: names, and parameters holding the configuration and files.
fn load_request(message: &[u8]) -> Result<usize, ApiError> {
    let mut entries = 0usize;
    let mut fields = Fields::new(message);
    while let Some((number, wire)) = fields.next()? {
        match number {
            1 | 2 => {
                string(wire, "the repository or model name")?;
            }
            3 => {
                entries += 1;
                if entries > MAX_LOAD_FILES {
                    return Err(too_many("load parameters", MAX_LOAD_FILES));
                }
                map_field(len(wire, "a load parameter")?, "a parameter name", |w| {
                    // ModelRepositoryParameter: a oneof whose string (3) must be UTF-8; its
                    // bytes (4) are a file.
                    let mut f = Fields::new(len(w, "a load parameter")?);
                    while let Some((n, w)) = f.next()? {
                        if n == 3 {
                            string(w, "a string parameter")?;
                        }
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
    }
    // Files are slices of the message; the load copies each once more to write it.
    Ok(size_of::<proto::RepositoryModelLoadRequest>()
        + entries * map_entry::<proto::ModelRepositoryParameter>()
        + 2 * message.len())
}

/// Any other request: at most [`SMALL_MESSAGE_BYTES`], well-formed, its strings UTF-8 where a
/// string may be (the walk does not know which fields are strings here: a bytes field is rare
/// in these messages, and prost still checks).
fn small_request(message: &[u8]) -> Result<usize, ApiError> {
    if message.len() > SMALL_MESSAGE_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit: SMALL_MESSAGE_BYTES,
        });
    }
    let mut fields = Fields::new(message);
    let mut n = 0usize;
    while fields.next()?.is_some() {
        n += 1;
    }
    // Each field at most a map entry's worth, plus the strings copied out.
    Ok(n * map_entry::<proto::ModelRepositoryParameter>() + message.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::MAX_ID_BYTES;
    use prost::Message;

    fn tensor(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
    ) -> proto::model_infer_request::InferInputTensor {
        proto::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }
    }

    #[test]
    fn a_real_request_passes_and_its_estimate_covers_its_decoded_form() {
        let mut input = tensor("input", "FP32", vec![2, 4]);
        input.contents = Some(proto::InferTensorContents {
            fp32_contents: vec![1.0; 8],
            ..Default::default()
        });
        let mut strings = tensor("s", "BYTES", vec![3]);
        strings.contents = Some(proto::InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"a"); 3],
            ..Default::default()
        });
        let message = proto::ModelInferRequest {
            model_name: "iris".into(),
            id: "42".into(),
            inputs: vec![input, strings],
            outputs: vec![proto::model_infer_request::InferRequestedOutputTensor {
                name: "label".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = message.encode_to_vec();
        let estimate = check(Kind::Infer, &bytes).unwrap();
        assert!(estimate >= 2 * size_of::<proto::model_infer_request::InferInputTensor>());
        assert!(estimate >= 8 * 4 + 3 * size_of::<Bytes>());
        // And prost agrees that it is well-formed.
        proto::ModelInferRequest::decode(&bytes[..]).unwrap();
    }

    #[test]
    fn counts_are_refused_before_anything_is_decoded() {
        // Empty `inputs` entries: 2 bytes on the wire each.
        let mut message = Vec::new();
        for _ in 0..=MAX_TENSORS {
            message.extend_from_slice(&[0x2a, 0x00]);
        }
        let e = check(Kind::Infer, &message).unwrap_err();
        assert!(e.to_string().contains("tensors"), "{e}");
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);

        let shape = tensor("x", "FP32", vec![1; MAX_RANK + 1]);
        let message = proto::ModelInferRequest {
            inputs: vec![shape],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(check(Kind::Infer, &message)
            .unwrap_err()
            .to_string()
            .contains("dimensions"));

        let message = proto::ModelInferRequest {
            id: "x".repeat(MAX_ID_BYTES + 1),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(check(Kind::Infer, &message)
            .unwrap_err()
            .to_string()
            .contains("request id"));

        let message = proto::ModelInferRequest {
            raw_input_contents: vec![Bytes::new(); MAX_TENSORS + 1],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(check(Kind::Infer, &message).is_err());
    }

    #[test]
    fn many_small_bytes_elements_are_estimated_at_their_decoded_size() {
        let mut input = tensor("s", "BYTES", vec![100_000]);
        input.contents = Some(proto::InferTensorContents {
            bytes_contents: vec![Bytes::new(); 100_000],
            ..Default::default()
        });
        let message = proto::ModelInferRequest {
            inputs: vec![input],
            ..Default::default()
        }
        .encode_to_vec();
        let estimate = check(Kind::Infer, &message).unwrap();
        assert!(
            estimate >= 100_000 * 2 * size_of::<Bytes>(),
            "{estimate} for {} bytes",
            message.len()
        );
    }

    #[test]
    fn malformed_messages_are_invalid_arguments() {
        for bad in [
            &[0x2a, 0x05, 0x00][..], // a length past the end
            &[0x2a][..],             // a key without its value
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[0x2b][..],                   // a group
            &[0x1a, 0x02, 0xc3, 0x28][..], // an id that is not UTF-8
            &[0x00, 0x00][..],             // field number 0
        ] {
            let e = check(Kind::Infer, bad).unwrap_err();
            assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
        assert!(check(Kind::Small, &vec![0u8; SMALL_MESSAGE_BYTES + 1]).is_err());
    }

    #[test]
    fn methods_map_to_their_message_kind() {
        let p = "/inference.GRPCInferenceService/";
        assert_eq!(Kind::of_path(&format!("{p}ModelInfer")), Kind::Infer);
        assert_eq!(Kind::of_path(&format!("{p}ModelStreamInfer")), Kind::Infer);
        assert_eq!(
            Kind::of_path(&format!("{p}RepositoryModelLoad")),
            Kind::Load
        );
        assert_eq!(Kind::of_path(&format!("{p}ServerLive")), Kind::Small);
    }

    #[test]
    fn parameters_of_every_kind_pass_as_prost_writes_them() {
        use proto::infer_parameter::ParameterChoice as P;
        let parameters: std::collections::HashMap<String, proto::InferParameter> = [
            ("s", P::StringParam("text".into())),
            ("d", P::DoubleParam(0.5)),
            ("u", P::Uint64Param(7)),
            ("i", P::Int64Param(-7)),
            ("b", P::BoolParam(true)),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                proto::InferParameter {
                    parameter_choice: Some(v),
                },
            )
        })
        .collect();
        let mut input = tensor("x", "FP32", vec![1]);
        input.parameters = parameters.clone();
        let message = proto::ModelInferRequest {
            parameters,
            inputs: vec![input],
            ..Default::default()
        }
        .encode_to_vec();
        check(Kind::Infer, &message).unwrap();

        use proto::model_repository_parameter::ParameterChoice as R;
        let load = proto::RepositoryModelLoadRequest {
            model_name: "m".into(),
            parameters: [
                ("config", R::StringParam("{}".into())),
                (
                    "file:1/model.onnx",
                    R::BytesParam(Bytes::from(vec![0xff, 0xfe])),
                ),
            ]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    proto::ModelRepositoryParameter {
                        parameter_choice: Some(v),
                    },
                )
            })
            .collect(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(check(Kind::Load, &load).unwrap() >= 2 * load.len());
    }

    #[test]
    fn loads_count_their_files() {
        let mut message = Vec::new();
        for _ in 0..=MAX_LOAD_FILES {
            message.extend_from_slice(&[0x1a, 0x00]);
        }
        assert!(check(Kind::Load, &message).is_err());
    }
}
