//! Bounded deserializers for the parts of a request header whose size the client chooses: lists
//! of tensors, shapes and parameter maps. Each stops at its limit while parsing, so a body's
//! decoded form stays within a small multiple of the body itself (the property
//! `tests/decoder_props.rs` checks).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::request::{Parameter, Parameters};

/// Most inputs, or requested outputs, in one request.
pub const MAX_TENSORS: usize = 1024;
/// Most dimensions of one tensor.
pub const MAX_RANK: usize = 32;
/// Most entries of one `parameters` object.
pub const MAX_PARAMETERS: usize = 64;

/// A sequence of at most `max` elements.
struct BoundedSeq<T> {
    max: usize,
    what: &'static str,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(16));
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                return Err(de::Error::custom(format!(
                    "more than {} {} (the limit)",
                    self.max, self.what
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

fn bounded_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedSeq {
        max,
        what,
        element: PhantomData,
    })
}

/// `inputs` and `outputs`.
pub fn tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    bounded_seq(d, MAX_TENSORS, "tensors")
}

/// Optional `outputs`.
pub fn optional_tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    struct Optional<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Optional<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of tensors or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            tensors(d).map(Some)
        }
    }
    d.deserialize_option(Optional(PhantomData))
}

/// A tensor's `shape`.
pub fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    bounded_seq(d, MAX_RANK, "dimensions")
}

/// An optional `parameters` object: at most [`MAX_PARAMETERS`] entries, each a string, number
/// or boolean (the protocol's `$parameter_value`), so no parameter can hide a large structure.
pub fn parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Parameters>, D::Error> {
    struct Params;
    impl<'de> Visitor<'de> for Params {
        type Value = Option<Parameters>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "an object of at most {MAX_PARAMETERS} string, number or boolean parameters"
            )
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Parameters::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.len() == MAX_PARAMETERS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_PARAMETERS} parameters (the limit)"
                    )));
                }
                let value: Scalar = map.next_value()?;
                out.insert(key, value.0);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Params)
}

/// One parameter value.
struct Scalar(Parameter);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean parameter value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::Uint(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::String(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(Parameter::Null))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "parameters")]
        parameters: Option<Parameters>,
        #[serde(default, deserialize_with = "shape")]
        shape: Vec<i64>,
    }

    #[test]
    fn parameters_are_scalars_and_few() {
        let p: Probe =
            serde_json::from_str(r#"{"parameters":{"a":1,"b":"x","c":true,"d":null}}"#).unwrap();
        assert_eq!(p.parameters.unwrap().len(), 4);
        let err = serde_json::from_str::<Probe>(r#"{"parameters":{"a":[1,2]}}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("string, number or boolean"), "{err}");
        let many: Vec<String> = (0..=MAX_PARAMETERS)
            .map(|i| format!("\"k{i}\":1"))
            .collect();
        let err =
            serde_json::from_str::<Probe>(&format!(r#"{{"parameters":{{{}}}}}"#, many.join(",")))
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("more than 64 parameters"), "{err}");
    }

    #[test]
    fn shapes_have_a_bounded_rank() {
        let ok: Probe = serde_json::from_str(r#"{"shape":[1,2,3]}"#).unwrap();
        assert_eq!(ok.shape, vec![1, 2, 3]);
        let dims = vec!["1"; MAX_RANK + 1].join(",");
        let err = serde_json::from_str::<Probe>(&format!(r#"{{"shape":[{dims}]}}"#))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("more than 32 dimensions"), "{err}");
    }
}
