//! `LinearClassifier` and `LinearRegressor` (`ai.onnx.ml` opset 1) as onnxruntime computes
//! them: scores in `f32` (the input cast to float first, whatever its type), onnxruntime's
//! labels (the first best raw score; a one-row binary model labels by the sign of its score)
//! and its post transforms, including the binary layouts `[1 - s, s]` and
//! `[logistic(-s), logistic(s)]`. Knows nothing of tract (`kernels.rs` wires it).

use super::common::{invalid, logistic, probit, transform, unsupported};
use super::common::{BuildError, Labels, PostTransform};

/// A built `LinearClassifier`.
#[derive(Debug)]
pub struct LinearClassifier {
    /// `[classes, features]`, row-major.
    coefficients: Vec<f32>,
    /// One per class: onnxruntime counts the classes by the intercepts.
    intercepts: Vec<f32>,
    pub labels: Labels,
    post: PostTransform,
}

impl LinearClassifier {
    pub fn build(
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        labels: Labels,
        post: PostTransform,
    ) -> Result<LinearClassifier, BuildError> {
        let classes = intercepts.len();
        if classes == 0 {
            return Err(invalid(
                "intercepts",
                "onnxruntime counts the classes by the intercepts, and there are none",
            ));
        }
        if coefficients.is_empty() || coefficients.len() % classes != 0 {
            return Err(invalid(
                "coefficients",
                format!(
                    "{} coefficients are not a whole row per class ({classes} intercepts)",
                    coefficients.len()
                ),
            ));
        }
        let label_attr = match labels {
            Labels::Int(_) => "classlabels_ints",
            Labels::Str(_) => "classlabels_strings",
        };
        let binary = classes == 1 && labels.len() == 2;
        if labels.len() != classes && !binary {
            return Err(invalid(
                label_attr,
                format!(
                    "{} labels for {classes} coefficient rows (onnxruntime refuses this model)",
                    labels.len()
                ),
            ));
        }
        if binary && post == PostTransform::Probit {
            return Err(unsupported(
                "post_transform",
                "PROBIT on a binary classifier with one coefficient row, whose second score \
                 onnxruntime leaves unwritten",
            ));
        }
        Ok(LinearClassifier {
            coefficients,
            intercepts,
            labels,
            post,
        })
    }

    fn classes(&self) -> usize {
        self.intercepts.len()
    }

    pub fn features(&self) -> usize {
        self.coefficients.len() / self.classes()
    }

    /// Scores per row: two for a binary model with one coefficient row, else one per class.
    pub fn width(&self) -> usize {
        if self.classes() == 1 {
            2
        } else {
            self.classes()
        }
    }

    /// `x` is `rows × features()`; writes `rows × width()` scores and each row's label (an
    /// index into `labels`).
    pub fn run(&self, x: &[f32], scores: &mut [f32], picks: &mut [usize]) {
        let features = self.features();
        let width = self.width();
        for ((row, out), pick) in x
            .chunks_exact(features)
            .zip(scores.chunks_exact_mut(width))
            .zip(picks.iter_mut())
        {
            if self.classes() == 1 {
                let s = dot(row, &self.coefficients) + self.intercepts[0];
                *pick = usize::from(s > 0.0);
                if self.post == PostTransform::Logistic {
                    out[0] = logistic(-s);
                    out[1] = logistic(s);
                } else {
                    out[0] = 1.0 - s;
                    out[1] = s;
                }
                continue;
            }
            for ((o, w), b) in out
                .iter_mut()
                .zip(self.coefficients.chunks_exact(features))
                .zip(&self.intercepts)
            {
                *o = dot(row, w) + b;
            }
            *pick = first_max(out);
            transform(self.post, out);
        }
    }
}

/// A built `LinearRegressor`.
#[derive(Debug)]
pub struct LinearRegressor {
    /// `[targets, features]`, row-major.
    coefficients: Vec<f32>,
    /// Used only when there is one per target, as onnxruntime does.
    intercepts: Option<Vec<f32>>,
    targets: usize,
    post: PostTransform,
}

impl LinearRegressor {
    pub fn build(
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        targets: i64,
        post: PostTransform,
    ) -> Result<LinearRegressor, BuildError> {
        let targets = usize::try_from(targets)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| invalid("targets", format!("{targets} is not positive")))?;
        if coefficients.is_empty() || coefficients.len() % targets != 0 {
            return Err(invalid(
                "coefficients",
                format!(
                    "{} coefficients are not a whole row per target ({targets} targets)",
                    coefficients.len()
                ),
            ));
        }
        let intercepts = (intercepts.len() == targets).then_some(intercepts);
        Ok(LinearRegressor {
            coefficients,
            intercepts,
            targets,
            post,
        })
    }

    pub fn targets(&self) -> usize {
        self.targets
    }

    pub fn features(&self) -> usize {
        self.coefficients.len() / self.targets
    }

    /// `x` is `rows × features()`; writes `rows × targets()`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        let features = self.features();
        for (row, out) in x
            .chunks_exact(features)
            .zip(out.chunks_exact_mut(self.targets))
        {
            for (t, (o, w)) in out
                .iter_mut()
                .zip(self.coefficients.chunks_exact(features))
                .enumerate()
            {
                *o = dot(row, w) + self.intercepts.as_ref().map_or(0.0, |b| b[t]);
            }
            if self.targets > 1 {
                transform(self.post, out);
            } else if self.post == PostTransform::Probit {
                out[0] = probit(out[0]);
            }
        }
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The index of the first largest value (`std::max_element`; a NaN never wins).
pub fn first_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_classifier_with_one_row_answers_onnxruntimes_layouts() {
        let c = LinearClassifier::build(
            vec![0.5, -1.0],
            vec![0.25],
            Labels::Int(vec![4, 9]),
            PostTransform::None,
        )
        .unwrap();
        let mut scores = [0.0; 4];
        let mut picks = [0; 2];
        c.run(&[1.0, 0.0, 0.0, 1.0], &mut scores, &mut picks);
        assert_eq!(scores, [0.25, 0.75, 1.75, -0.75]);
        assert_eq!(picks, [1, 0]);
        let c = LinearClassifier::build(
            vec![1.0],
            vec![0.0],
            Labels::Int(vec![4, 9]),
            PostTransform::Logistic,
        )
        .unwrap();
        let mut scores = [0.0; 2];
        c.run(&[0.0], &mut scores, &mut picks[..1]);
        assert_eq!(scores, [0.5, 0.5]);
        assert_eq!(picks[0], 0, "a score of 0 is not above 0");
    }

    #[test]
    fn labels_that_do_not_fit_the_rows_are_refused() {
        let e = LinearClassifier::build(
            vec![1.0, 2.0],
            vec![0.0],
            Labels::Int(vec![1, 2, 3]),
            PostTransform::None,
        )
        .unwrap_err();
        assert_eq!(e.attribute, "classlabels_ints");
        let e = LinearClassifier::build(
            vec![1.0],
            vec![0.0],
            Labels::Str(vec!["a".into(), "b".into()]),
            PostTransform::Probit,
        )
        .unwrap_err();
        assert!(e.unsupported && e.attribute == "post_transform");
    }

    #[test]
    fn a_regressor_ignores_intercepts_of_the_wrong_length() {
        let r =
            LinearRegressor::build(vec![1.0, 1.0], vec![5.0, 6.0], 1, PostTransform::None).unwrap();
        let mut out = [0.0];
        r.run(&[1.0, 2.0], &mut out);
        assert_eq!(out, [3.0]);
    }
}
