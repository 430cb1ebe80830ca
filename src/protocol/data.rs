//! Tensor `data` in both encodings: JSON arrays (flat or nested, row-major) and the binary layout.
//!
//! JSON data is parsed straight into the little-endian buffer of its datatype by a serde visitor,
//! without building a `serde_json::Value` per element: a 64-row request costs one allocation.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use crate::tensor::{DataType, Element, TensorData};

/// Parses a JSON `data` value (array, nested arrays or a single scalar) for `dtype`.
/// `expected_len` is the element count the declared shape promises: it only sizes the buffer,
/// and never beyond what the JSON text can hold (each element takes at least one character and
/// a separator), so a huge declared shape with little data allocates nothing large. `body` is
/// the request body `raw` lies in: unescaped strings are slices of it, not copies.
pub fn parse_json_data(
    raw: &serde_json::value::RawValue,
    dtype: DataType,
    expected_len: usize,
    body: &Bytes,
) -> Result<TensorData, String> {
    let text = raw.get().len();
    let mut sink = match dtype {
        // A string element takes at least three characters: `"",`.
        DataType::Bytes => Sink::Strings(Vec::with_capacity(expected_len.min(text / 3 + 1))),
        _ => Sink::Fixed(Vec::with_capacity(
            expected_len.min(text / 2 + 1) * dtype.size().unwrap_or(1),
        )),
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    ElementSeed {
        dtype,
        sink: &mut sink,
        depth: 0,
        body,
        max: expected_len,
    }
    .deserialize(&mut de)
    .map_err(|e| strip_position(e.to_string()))?;
    Ok(match sink {
        Sink::Fixed(v) => TensorData::Fixed(Bytes::from(v)),
        Sink::Strings(v) => TensorData::Bytes(v),
    })
}

/// Splits a binary BYTES tensor (each element a 4-byte little-endian length, then the bytes)
/// holding at most `expected` elements.
pub fn parse_binary_bytes(buf: &Bytes, expected: usize) -> Result<Vec<Bytes>, String> {
    let mut items = Vec::with_capacity(expected.min(buf.len() / 4));
    let mut pos = 0;
    while pos < buf.len() {
        if items.len() == expected {
            return Err(format!(
                "the binary data holds more than the {expected} elements its shape holds"
            ));
        }
        let Some(len_bytes) = buf.get(pos..pos + 4) else {
            return Err(format!(
                "BYTES element at offset {pos} has a truncated 4-byte length prefix"
            ));
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("slice of 4 bytes")) as usize;
        let start = pos + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| {
                format!(
                    "BYTES element at offset {pos} claims {len} bytes, past the end of its tensor"
                )
            })?;
        items.push(buf.slice(start..end));
        pos = end;
    }
    Ok(items)
}

/// Nested arrays deeper than this are refused, so a hostile body cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

enum Sink {
    Fixed(Vec<u8>),
    Strings(Vec<Bytes>),
}

struct ElementSeed<'s> {
    dtype: DataType,
    sink: &'s mut Sink,
    depth: usize,
    body: &'s Bytes,
    /// The elements the shape holds: parsing stops past them, so data longer than its shape
    /// cannot grow the buffer.
    max: usize,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ElementSeed<'_> {
    fn push<T: Element>(&mut self, v: T) {
        if let Sink::Fixed(out) = self.sink {
            v.write_le(out);
        }
    }

    /// Refuses an element beyond the shape's count.
    fn room<E: de::Error>(&self) -> Result<(), E> {
        let held = match &*self.sink {
            Sink::Fixed(out) => out.len() / self.dtype.size().unwrap_or(1),
            Sink::Strings(out) => out.len(),
        };
        if held >= self.max {
            Err(E::custom(format!(
                "more data than the {} elements its shape holds",
                self.max
            )))
        } else {
            Ok(())
        }
    }

    fn wrong<E: de::Error>(&self, what: &str) -> E {
        E::custom(format!("expected {} elements, found {what}", self.dtype))
    }

    /// A JSON number as FP16 or BF16 (rounded to nearest). A finite number beyond the type's
    /// range is refused rather than sent to the model as infinity.
    fn half<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let finite = match self.dtype {
            DataType::Fp16 => {
                let h = half::f16::from_f64(v);
                self.push(h);
                h.is_finite()
            }
            _ => {
                let h = half::bf16::from_f64(v);
                self.push(h);
                h.is_finite()
            }
        };
        if finite {
            Ok(())
        } else {
            Err(E::custom(format!(
                "value {v} is out of range for {}",
                self.dtype
            )))
        }
    }

    fn integer<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        self.room()?;
        macro_rules! push_int {
            ($t:ty) => {{
                let x = <$t>::try_from(v).map_err(|_| {
                    E::custom(format!("value {v} is out of range for {}", self.dtype))
                })?;
                self.push(x);
            }};
        }
        match self.dtype {
            DataType::Uint8 => push_int!(u8),
            DataType::Uint16 => push_int!(u16),
            DataType::Uint32 => push_int!(u32),
            DataType::Uint64 => push_int!(u64),
            DataType::Int8 => push_int!(i8),
            DataType::Int16 => push_int!(i16),
            DataType::Int32 => push_int!(i32),
            DataType::Int64 => push_int!(i64),
            DataType::Fp32 => self.push(v as f32),
            DataType::Fp64 => self.push(v as f64),
            DataType::Fp16 | DataType::Bf16 => self.half(v as f64)?,
            DataType::Bool | DataType::Bytes => return Err(self.wrong(&format!("the number {v}"))),
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} elements in a flat or nested array", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("arrays are nested too deeply"));
        }
        while seq
            .next_element_seed(ElementSeed {
                dtype: self.dtype,
                sink: &mut *self.sink,
                depth: self.depth + 1,
                body: self.body,
                max: self.max,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        if self.dtype != DataType::Bool {
            return Err(self.wrong(&format!("the boolean {v}")));
        }
        self.room()?;
        self.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.integer(v as i128)
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.integer(v as i128)
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.room()?;
        match self.dtype {
            DataType::Fp32 => self.push(v as f32),
            DataType::Fp64 => self.push(v),
            DataType::Fp16 | DataType::Bf16 => self.half(v)?,
            _ => return Err(self.wrong(&format!("the number {v}"))),
        }
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        if self.dtype != DataType::Bytes {
            return Err(self.wrong(&format!("the string {v:?}")));
        }
        self.room()?;
        if let Sink::Strings(out) = self.sink {
            out.push(slice_of(self.body, v.as_bytes()));
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.dtype != DataType::Bytes {
            return Err(self.wrong(&format!("the string {v:?}")));
        }
        self.room()?;
        if let Sink::Strings(out) = self.sink {
            out.push(Bytes::copy_from_slice(v.as_bytes()));
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.wrong("null"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.wrong("an object"))
    }
}

/// `part` as a slice of `body` when it lies inside it (no copy), else a copy.
fn slice_of(body: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if part.is_empty() {
        Bytes::new()
    } else if start <= body.len() && part.len() <= body.len() - start {
        body.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// serde_json appends "at line 1 column N" relative to the `data` value alone, which misleads.
fn strip_position(message: String) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn parse(json: &str, dtype: DataType) -> Result<TensorData, String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        parse_json_data(&raw, dtype, 4, &Bytes::new())
    }

    fn fixed(json: &str, dtype: DataType) -> Vec<u8> {
        match parse(json, dtype).unwrap() {
            TensorData::Fixed(b) => b.to_vec(),
            TensorData::Bytes(_) => panic!("fixed data expected"),
        }
    }

    #[test]
    fn flat_and_nested_agree() {
        let flat = fixed("[1, 2.5, -3, 4e2]", DataType::Fp32);
        let nested = fixed("[[1, 2.5], [-3, 400]]", DataType::Fp32);
        assert_eq!(flat, nested);
        let expected: Vec<u8> = [1.0f32, 2.5, -3.0, 400.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(flat, expected);
    }

    #[test]
    fn half_precision_numbers_round_to_nearest_and_overflow_is_refused() {
        let want: Vec<u8> = [1.0f32, 0.1, -2.25, 65504.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(fixed("[1, 0.1, -2.25, 65504]", DataType::Fp16), want);
        assert_eq!(
            fixed("[0.1]", DataType::Fp16),
            0x2e66u16.to_le_bytes().to_vec(),
            "0.1 rounds to the nearest FP16, 0x2e66"
        );
        let err = parse("[70000]", DataType::Fp16).unwrap_err();
        assert!(err.contains("out of range for FP16"), "{err}");
        let want: Vec<u8> = [1.0f32, 3e38]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(fixed("[1, 3e38]", DataType::Bf16), want);
        assert!(parse("[1e39]", DataType::Bf16).is_err());
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(fixed("[1, -1]", DataType::Int8), vec![1, 0xff]);
        let err = parse("[300]", DataType::Uint8).unwrap_err();
        assert!(err.contains("out of range for UINT8"), "{err}");
        let err = parse("[1.5]", DataType::Int32).unwrap_err();
        assert!(err.contains("expected INT32 elements"), "{err}");
        assert_eq!(
            fixed("[9223372036854775807]", DataType::Int64),
            i64::MAX.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn bools_strings_and_mismatches() {
        assert_eq!(fixed("[true, false]", DataType::Bool), vec![1, 0]);
        assert!(parse("[1]", DataType::Bool).is_err());
        match parse(r#"["a", "bé"]"#, DataType::Bytes).unwrap() {
            TensorData::Bytes(items) => {
                assert_eq!(items, vec![Bytes::from("a"), Bytes::from("bé")])
            }
            TensorData::Fixed(_) => panic!("strings expected"),
        }
        assert!(parse(r#"["a"]"#, DataType::Fp32).is_err());
        assert!(parse("[null]", DataType::Fp32).is_err());
        assert!(parse(r#"[{"a": 1}]"#, DataType::Fp32).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&json, DataType::Fp32)
            .unwrap_err()
            .contains("nested too deeply"));
    }

    #[test]
    fn binary_bytes_elements() {
        let mut buf = Vec::new();
        for s in ["ab", "", "xyz"] {
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        let items = parse_binary_bytes(&Bytes::from(buf.clone()), 3).unwrap();
        assert!(parse_binary_bytes(&Bytes::from(buf.clone()), 2)
            .unwrap_err()
            .contains("more than the 2 elements"));
        assert_eq!(
            items,
            vec![Bytes::from("ab"), Bytes::new(), Bytes::from("xyz")]
        );
        buf.truncate(buf.len() - 1);
        assert!(parse_binary_bytes(&Bytes::from(buf), 3).is_err());
        assert!(parse_binary_bytes(&Bytes::from_static(&[1, 0]), 3).is_err());
    }
}
