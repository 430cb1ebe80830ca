//! What the `ai.onnx.ml` operators share, as onnxruntime computes it: the post transforms of
//! classifier and regressor scores (`ml_common.h`), class labels, and the build error every
//! operator's attributes are checked into. No tract here.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub fn parse(s: &str) -> Result<PostTransform, String> {
        Ok(match s {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => return Err(format!("unknown post_transform '{other}'")),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }
}

/// Why an operator cannot be built: the attribute it is about and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    pub attribute: &'static str,
    pub reason: String,
    /// The model is valid ONNX that this engine does not serve (rather than a malformed one).
    pub unsupported: bool,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attribute '{}': {}", self.attribute, self.reason)
    }
}

pub fn invalid(attribute: &'static str, reason: impl Into<String>) -> BuildError {
    BuildError {
        attribute,
        reason: reason.into(),
        unsupported: false,
    }
}

pub fn unsupported(attribute: &'static str, reason: impl Into<String>) -> BuildError {
    BuildError {
        attribute,
        reason: reason.into(),
        unsupported: true,
    }
}

/// `write_scores` for two or more scores, in place.
pub fn transform(post: PostTransform, scores: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
        PostTransform::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
        PostTransform::Softmax => {
            let max = scores
                .iter()
                .fold(-f32::MAX, |m, &s| if s > m { s } else { m });
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            scores.iter_mut().for_each(|s| *s /= sum);
        }
        PostTransform::SoftmaxZero => {
            // Zeros stay (nearly) zero: they are scaled, not exponentiated.
            let max = scores
                .iter()
                .fold(-f32::MAX, |m, &s| if s > m { s } else { m });
            let exp_neg_max = (-max).exp();
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                if *s > 0.000_000_1 || *s < -0.000_000_1 {
                    *s = (*s - max).exp();
                    sum += *s;
                } else {
                    *s *= exp_neg_max;
                }
            }
            scores.iter_mut().for_each(|s| *s /= sum);
        }
    }
}

/// onnxruntime's `ComputeLogistic`: symmetric, so large negative scores keep their precision.
pub fn logistic(v: f32) -> f32 {
    let p = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - p
    } else {
        p
    }
}

/// onnxruntime's `ComputeProbit`, with its approximation of the inverse error function.
pub fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

fn erf_inv(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sign * v3.sqrt()
}
