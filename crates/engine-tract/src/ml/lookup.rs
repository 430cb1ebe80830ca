//! Value-to-value maps as onnxruntime computes them: `LabelEncoder` (opset 1: strings to their
//! index and back; opsets 2 to 4: key and value lists of strings, int64s or floats) and
//! `CategoryMapper`. onnxruntime's duplicates rules differ by operator and are kept: opset 1 and
//! `CategoryMapper` keep the last duplicate key, opsets 2 and later the first. A NaN key
//! matches a NaN input from opset 4 only; `-0.0` and `0.0` are one key. No tract here.

use std::collections::HashMap;

/// One typed list of keys or values.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Str(Vec<String>),
    Int(Vec<i64>),
    Float(Vec<f32>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Str(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Values::Str(_) => Kind::Str,
            Values::Int(_) => Kind::Int,
            Values::Float(_) => Kind::Float,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
}

/// One value of a map's output type (its default).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f32),
}

/// A built map from keys of one type to values of one type, with a default.
#[derive(Debug)]
pub struct Encoder {
    index: Index,
    pub values: Values,
    pub default: Value,
}

#[derive(Debug)]
enum Index {
    Str(HashMap<String, usize>),
    Int(HashMap<i64, usize>),
    /// Float keys by their bits, `-0.0` folded into `0.0` and every NaN into one NaN.
    Float {
        map: HashMap<u32, usize>,
        nan_matches: bool,
    },
}

/// Which duplicate key wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplicates {
    First,
    Last,
}

impl Encoder {
    /// `keys` and `values` have the same length (the caller checks, naming the attributes).
    pub fn new(
        keys: Values,
        values: Values,
        default: Value,
        duplicates: Duplicates,
        nan_matches: bool,
    ) -> Encoder {
        /// `keys` are (position, key): a key left out keeps the positions of the others.
        fn fill<K: std::hash::Hash + Eq>(
            keys: impl Iterator<Item = (usize, K)>,
            duplicates: Duplicates,
        ) -> HashMap<K, usize> {
            let mut map = HashMap::new();
            for (i, k) in keys {
                match duplicates {
                    Duplicates::Last => {
                        map.insert(k, i);
                    }
                    Duplicates::First => {
                        map.entry(k).or_insert(i);
                    }
                }
            }
            map
        }
        let index = match keys {
            Values::Str(k) => Index::Str(fill(k.into_iter().enumerate(), duplicates)),
            Values::Int(k) => Index::Int(fill(k.into_iter().enumerate(), duplicates)),
            Values::Float(k) => Index::Float {
                map: fill(
                    k.into_iter()
                        .enumerate()
                        .filter(|(_, v)| nan_matches || !v.is_nan())
                        .map(|(i, v)| (i, float_key(v))),
                    duplicates,
                ),
                nan_matches,
            },
        };
        Encoder {
            index,
            values,
            default,
        }
    }

    pub fn key_kind(&self) -> Kind {
        match self.index {
            Index::Str(_) => Kind::Str,
            Index::Int(_) => Kind::Int,
            Index::Float { .. } => Kind::Float,
        }
    }

    pub fn lookup_str(&self, k: &str) -> Option<usize> {
        match &self.index {
            Index::Str(m) => m.get(k).copied(),
            _ => None,
        }
    }

    pub fn lookup_int(&self, k: i64) -> Option<usize> {
        match &self.index {
            Index::Int(m) => m.get(&k).copied(),
            _ => None,
        }
    }

    pub fn lookup_float(&self, k: f32) -> Option<usize> {
        match &self.index {
            Index::Float { map, nan_matches } => {
                if k.is_nan() && !nan_matches {
                    return None;
                }
                map.get(&float_key(k)).copied()
            }
            _ => None,
        }
    }

    /// Maps `hits` (an index into the values, or none) into the output type.
    pub fn strings(&self, hits: impl Iterator<Item = Option<usize>>) -> Vec<String> {
        let (Values::Str(values), Value::Str(default)) = (&self.values, &self.default) else {
            unreachable!("string output of a map built with string values")
        };
        hits.map(|h| h.map_or_else(|| default.clone(), |i| values[i].clone()))
            .collect()
    }

    pub fn ints(&self, hits: impl Iterator<Item = Option<usize>>) -> Vec<i64> {
        let (Values::Int(values), Value::Int(default)) = (&self.values, &self.default) else {
            unreachable!("int64 output of a map built with int64 values")
        };
        hits.map(|h| h.map_or(*default, |i| values[i])).collect()
    }

    pub fn floats(&self, hits: impl Iterator<Item = Option<usize>>) -> Vec<f32> {
        let (Values::Float(values), Value::Float(default)) = (&self.values, &self.default) else {
            unreachable!("float output of a map built with float values")
        };
        hits.map(|h| h.map_or(*default, |i| values[i])).collect()
    }
}

fn float_key(v: f32) -> u32 {
    if v.is_nan() {
        f32::NAN.to_bits()
    } else if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_nan_follow_onnxruntime() {
        let keys = Values::Float(vec![1.0, f32::NAN, 1.0, -0.0]);
        let values = Values::Int(vec![3, 4, 5, 6]);
        let e = Encoder::new(
            keys.clone(),
            values.clone(),
            Value::Int(-1),
            Duplicates::First,
            false,
        );
        let got = e.ints([1.0, f32::NAN, 0.0].iter().map(|&k| e.lookup_float(k)));
        assert_eq!(got, [3, -1, 6]);
        let e = Encoder::new(keys, values, Value::Int(-1), Duplicates::Last, true);
        let got = e.ints([1.0, f32::NAN].iter().map(|&k| e.lookup_float(k)));
        assert_eq!(got, [5, 4]);
    }
}
