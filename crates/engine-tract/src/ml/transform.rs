//! The `ai.onnx.ml` feature transforms exporters put before a model, as onnxruntime computes
//! them: `Scaler`, `Imputer`, `OneHotEncoder`, `Normalizer`, `Binarizer`,
//! `ArrayFeatureExtractor` and `FeatureVectorizer`. Each works on a row-major buffer and the
//! width of its last axis (onnxruntime's `stride`); none knows tract (`kernels.rs` wires them).

use std::collections::HashMap;

use super::common::{invalid, BuildError};

/// `Scaler`: `(x - offset) * scale`, per column or with one value for all.
#[derive(Debug)]
pub struct Scaler {
    scale: Vec<f32>,
    offset: Vec<f32>,
}

impl Scaler {
    pub fn build(scale: Vec<f32>, offset: Vec<f32>) -> Result<Scaler, BuildError> {
        if scale.is_empty() {
            return Err(invalid("scale", "is empty"));
        }
        if scale.len() != offset.len() {
            return Err(invalid(
                "offset",
                format!("{} offsets for {} scales", offset.len(), scale.len()),
            ));
        }
        Ok(Scaler { scale, offset })
    }

    /// The width the attributes fix (1 fits any).
    pub fn width(&self) -> usize {
        self.scale.len()
    }

    fn check(&self, stride: usize) -> Result<(), String> {
        if self.scale.len() == stride || self.scale.len() == 1 {
            Ok(())
        } else {
            Err(format!(
                "Scaler has {} scales and offsets; the input has {stride} columns (either both \
                 are the number of columns or 1)",
                self.scale.len()
            ))
        }
    }

    /// Float, int32 and int64 inputs compute in `f32` (the integer converted first).
    pub fn run_f32(&self, x: &[f32], stride: usize, out: &mut [f32]) -> Result<(), String> {
        self.check(stride)?;
        let per = self.scale.len() != 1;
        for (i, (o, v)) in out.iter_mut().zip(x).enumerate() {
            let c = if per { i % stride } else { 0 };
            *o = (v - self.offset[c]) * self.scale[c];
        }
        Ok(())
    }

    /// Double inputs compute in `f64`, rounded to `f32` at the end.
    pub fn run_f64(&self, x: &[f64], stride: usize, out: &mut [f32]) -> Result<(), String> {
        self.check(stride)?;
        let per = self.scale.len() != 1;
        for (i, (o, v)) in out.iter_mut().zip(x).enumerate() {
            let c = if per { i % stride } else { 0 };
            *o = ((v - f64::from(self.offset[c])) * f64::from(self.scale[c])) as f32;
        }
        Ok(())
    }
}

/// `Imputer`: values equal to the replaced value (NaN matching NaN) become the imputed value of
/// their column, or the first imputed value when there is not one per column.
#[derive(Debug)]
pub enum Imputer {
    Float { imputed: Vec<f32>, replaced: f32 },
    Int { imputed: Vec<i64>, replaced: i64 },
}

impl Imputer {
    pub fn run_f32(imputed: &[f32], replaced: f32, x: &[f32], stride: usize, out: &mut [f32]) {
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            let hit = (v.is_nan() && replaced.is_nan()) || v == replaced;
            *o = if hit { pick(imputed, i, stride) } else { v };
        }
    }

    pub fn run_i64(imputed: &[i64], replaced: i64, x: &[i64], stride: usize, out: &mut [i64]) {
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = if v == replaced {
                pick(imputed, i, stride)
            } else {
                v
            };
        }
    }
}

fn pick<T: Copy>(imputed: &[T], i: usize, stride: usize) -> T {
    if imputed.len() == stride {
        imputed[i % stride]
    } else {
        imputed[0]
    }
}

/// `OneHotEncoder`: one `f32` column per category after the input's own axes.
#[derive(Debug)]
pub struct OneHotEncoder {
    ints: HashMap<i64, usize>,
    strings: HashMap<String, usize>,
    count: usize,
    /// An unknown category is all zeros (else the call fails, as onnxruntime's does).
    zeros: bool,
}

impl OneHotEncoder {
    pub fn build(
        ints: Vec<i64>,
        strings: Vec<String>,
        zeros: bool,
    ) -> Result<OneHotEncoder, BuildError> {
        if !ints.is_empty() && !strings.is_empty() {
            return Err(invalid(
                "cats_strings",
                "both cats_int64s and cats_strings are set",
            ));
        }
        let count = ints.len().max(strings.len());
        if count == 0 {
            return Err(invalid("cats_int64s", "no categories are given"));
        }
        // Later duplicates win, as in onnxruntime's map.
        let ints = ints.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
        let strings = strings
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect();
        Ok(OneHotEncoder {
            ints,
            strings,
            count,
            zeros,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Numbers are truncated to int64 first, as C++'s cast does (NaN and out-of-range values
    /// become `i64::MIN`, x86's answer).
    pub fn run_numbers(&self, x: impl Iterator<Item = f64>, out: &mut [f32]) -> Result<(), String> {
        out.iter_mut().for_each(|o| *o = 0.0);
        for (i, v) in x.enumerate() {
            // NaN is outside the range too.
            let k = if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v) {
                i64::MIN
            } else {
                v as i64
            };
            self.set(self.ints.get(&k).copied(), i, out)?;
        }
        Ok(())
    }

    pub fn run_i64(&self, x: &[i64], out: &mut [f32]) -> Result<(), String> {
        out.iter_mut().for_each(|o| *o = 0.0);
        for (i, k) in x.iter().enumerate() {
            self.set(self.ints.get(k).copied(), i, out)?;
        }
        Ok(())
    }

    pub fn run_strings(&self, x: &[String], out: &mut [f32]) -> Result<(), String> {
        out.iter_mut().for_each(|o| *o = 0.0);
        for (i, k) in x.iter().enumerate() {
            self.set(self.strings.get(k.as_str()).copied(), i, out)?;
        }
        Ok(())
    }

    fn set(&self, hit: Option<usize>, i: usize, out: &mut [f32]) -> Result<(), String> {
        match hit {
            Some(c) => out[i * self.count + c] = 1.0,
            None if !self.zeros => {
                return Err("OneHotEncoder: an unknown category, and zeros = 0".into())
            }
            None => {}
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Max,
    L1,
    L2,
}

impl Norm {
    pub fn parse(s: &str) -> Result<Norm, String> {
        Ok(match s {
            "MAX" => Norm::Max,
            "L1" => Norm::L1,
            "L2" => Norm::L2,
            other => return Err(format!("unknown norm '{other}'")),
        })
    }
}

/// An input element type of `Normalizer`: onnxruntime takes absolute values and squares in
/// the input's own type, then converts to `f32`.
pub trait NormInput: Copy {
    fn to_f32(self) -> f32;
    fn abs_f32(self) -> f32;
    fn square_f32(self) -> f32;
    fn negative(self) -> bool;
}

macro_rules! norm_input_int {
    ($t:ty) => {
        impl NormInput for $t {
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn abs_f32(self) -> f32 {
                self.wrapping_abs() as f32
            }
            fn square_f32(self) -> f32 {
                self.wrapping_mul(self) as f32
            }
            fn negative(self) -> bool {
                self < 0
            }
        }
    };
}

norm_input_int!(i32);
norm_input_int!(i64);

impl NormInput for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn abs_f32(self) -> f32 {
        self.abs()
    }
    fn square_f32(self) -> f32 {
        self * self
    }
    fn negative(self) -> bool {
        self < 0.0
    }
}

impl NormInput for f64 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn abs_f32(self) -> f32 {
        self.abs() as f32
    }
    fn square_f32(self) -> f32 {
        (self * self) as f32
    }
    fn negative(self) -> bool {
        self < 0.0
    }
}

/// `Normalizer`, row by row; a row whose norm is 0 is copied as it is.
pub fn normalize<T: NormInput>(norm: Norm, x: &[T], stride: usize, out: &mut [f32]) {
    if stride == 0 {
        return;
    }
    for (row, out) in x.chunks_exact(stride).zip(out.chunks_exact_mut(stride)) {
        match norm {
            Norm::Max => {
                let mut max = f32::MIN;
                for v in row {
                    let v = v.to_f32();
                    if max < v {
                        max = v;
                    }
                }
                for (o, v) in out.iter_mut().zip(row) {
                    *o = if max != 0.0 {
                        v.to_f32() / max
                    } else {
                        v.to_f32()
                    };
                }
            }
            Norm::L1 => {
                let sum: f32 = row.iter().map(|v| v.abs_f32()).sum();
                for (o, v) in out.iter_mut().zip(row) {
                    *o = if sum != 0.0 {
                        v.to_f32() / sum
                    } else {
                        v.to_f32()
                    };
                }
            }
            Norm::L2 => {
                let sum: f32 = row.iter().map(|v| v.square_f32()).sum();
                for (o, v) in out.iter_mut().zip(row) {
                    *o = if sum != 0.0 {
                        let r = (v.square_f32() / sum).sqrt();
                        if v.negative() {
                            -r
                        } else {
                            r
                        }
                    } else {
                        v.to_f32()
                    };
                }
            }
        }
    }
}

/// `Binarizer`: 1 above the threshold, else 0; a NaN fails the call, as in onnxruntime.
pub fn binarize(threshold: f32, x: &[f32], out: &mut [f32]) -> Result<(), String> {
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        if v.is_nan() {
            return Err(format!("Binarizer: input element {i} is NaN"));
        }
        *o = if v > threshold { 1.0 } else { 0.0 };
    }
    Ok(())
}

/// `ArrayFeatureExtractor`: the columns `indices` of every row of width `stride`.
pub fn extract<T: Clone>(
    x: &[T],
    stride: usize,
    indices: &[i64],
    out: &mut Vec<T>,
) -> Result<(), String> {
    let mut columns = Vec::with_capacity(indices.len());
    for (i, &ix) in indices.iter().enumerate() {
        match usize::try_from(ix) {
            Ok(c) if c < stride => columns.push(c),
            _ => {
                return Err(format!(
                    "ArrayFeatureExtractor: index {i} ({ix}) is outside the {stride} columns"
                ))
            }
        }
    }
    if indices.is_empty() {
        return Err("ArrayFeatureExtractor: no indices".into());
    }
    out.clear();
    for row in x.chunks_exact(stride) {
        out.extend(columns.iter().map(|&c| row[c].clone()));
    }
    Ok(())
}

/// `FeatureVectorizer`: each input's first `dims[k]` columns side by side, zero-padded where an
/// input is narrower.
pub fn vectorize(
    dims: &[usize],
    inputs: &[(Vec<f32>, usize)],
    rows: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let total: usize = dims.iter().sum();
    out.iter_mut().for_each(|o| *o = 0.0);
    let mut offset = 0;
    for ((values, width), &dim) in inputs.iter().zip(dims) {
        if *width > 0 && values.len() / width != rows {
            return Err(format!(
                "FeatureVectorizer: an input has {} rows where the first has {rows}",
                values.len() / width
            ));
        }
        let take = (*width).min(dim);
        for r in 0..rows {
            let src = &values[r * width..r * width + take];
            out[r * total + offset..r * total + offset + take].copy_from_slice(src);
        }
        offset += dim;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normalizer_leaves_zero_rows_as_they_are() {
        let mut out = [0f32; 4];
        normalize(Norm::L2, &[0.0f32, 0.0, 3.0, -4.0], 2, &mut out);
        assert_eq!(out, [0.0, 0.0, 0.6, -0.8]);
        normalize(Norm::Max, &[-2i64, -4, 2, 4], 2, &mut out);
        assert_eq!(out, [1.0, 2.0, 0.5, 1.0], "the max of -2 and -4 is -2");
    }

    #[test]
    fn one_hot_truncates_numbers_and_refuses_unknowns_without_zeros() {
        let e = OneHotEncoder::build(vec![1, 2], vec![], false).unwrap();
        let mut out = [0f32; 4];
        e.run_numbers([1.9, 2.2].into_iter(), &mut out).unwrap();
        assert_eq!(out, [1.0, 0.0, 0.0, 1.0]);
        assert!(e
            .run_numbers([f64::NAN].into_iter(), &mut out[..2])
            .is_err());
    }

    #[test]
    fn the_imputer_uses_the_first_value_unless_there_is_one_per_column() {
        let mut out = [0f32; 3];
        Imputer::run_f32(
            &[7.0, 8.0],
            f32::NAN,
            &[f32::NAN, 1.0, f32::NAN],
            3,
            &mut out,
        );
        assert_eq!(out, [7.0, 1.0, 7.0]);
    }
}
