//! `SVMClassifier` and `SVMRegressor` (`ai.onnx.ml` opset 1) as onnxruntime computes them:
//! its kernels (linear, poly, rbf, sigmoid) in `f32`, the one-versus-one decision values summed
//! in `f64`, votes for the label, Platt scaling (`prob_a`, `prob_b`) and libsvm's pairwise
//! coupling for probabilities, its binary layouts and its post transforms. Knows nothing of
//! tract (`kernels.rs` wires it).

use super::common::{invalid, logistic, transform, unsupported};
use super::common::{BuildError, Labels, PostTransform};
use super::linear::{dot, first_max};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

impl KernelKind {
    /// onnxruntime's `MakeKernel`: anything it does not know is SIGMOID; we refuse instead.
    pub fn parse(s: &str) -> Result<KernelKind, String> {
        Ok(match s {
            "LINEAR" => KernelKind::Linear,
            "POLY" => KernelKind::Poly,
            "RBF" => KernelKind::Rbf,
            "SIGMOID" => KernelKind::Sigmoid,
            other => return Err(format!("unknown kernel_type '{other}'")),
        })
    }
}

/// The kernel and its `kernel_params` (gamma, coef0, degree).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub kind: KernelKind,
    pub gamma: f32,
    pub coef0: f32,
    pub degree: f32,
}

impl Kernel {
    pub fn new(kind: KernelKind, params: &[f32]) -> Result<Kernel, BuildError> {
        let (gamma, coef0, degree) = match params {
            [] => (0.0, 0.0, 0.0),
            [g, c, d, ..] => (*g, *c, *d),
            _ => {
                return Err(invalid(
                    "kernel_params",
                    format!(
                        "{} values where gamma, coef0 and degree are read",
                        params.len()
                    ),
                ))
            }
        };
        Ok(Kernel {
            kind,
            gamma,
            coef0,
            degree,
        })
    }

    /// onnxruntime's `batched_kernel_dot` for one row against one vector; `c` is the constant
    /// a linear kernel adds (`rho[0]` in liblinear mode, else 0).
    fn eval(&self, x: &[f32], v: &[f32], c: f32) -> f32 {
        match self.kind {
            KernelKind::Rbf => {
                let mut sum = 0f32;
                for (a, b) in x.iter().zip(v) {
                    let d = a - b;
                    sum += d * d;
                }
                (-self.gamma * sum).exp()
            }
            KernelKind::Linear => dot(x, v) + c,
            KernelKind::Poly => {
                let s = self.gamma * dot(x, v) + self.coef0;
                if self.degree == 2.0 {
                    s * s
                } else if self.degree == 3.0 {
                    s * s * s
                } else {
                    s.powf(self.degree)
                }
            }
            KernelKind::Sigmoid => (self.gamma * dot(x, v) + self.coef0).tanh(),
        }
    }
}

/// Support vectors grouped by class (libsvm's SVC), or one weight row per class (liblinear).
#[derive(Debug)]
enum Mode {
    Svc {
        /// `[vectors, features]`.
        support_vectors: Vec<f32>,
        vectors_per_class: Vec<usize>,
        /// Index of each class's first support vector.
        starts: Vec<usize>,
    },
    Linear,
}

/// A built `SVMClassifier`.
#[derive(Debug)]
pub struct SvmClassifier {
    kernel: Kernel,
    mode: Mode,
    features: usize,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    pub labels: Labels,
    post: PostTransform,
    weights_all_positive: bool,
}

/// The attributes of an `SVMClassifier` node.
pub struct SvmClassifierAttributes {
    pub kernel: Kernel,
    pub vectors_per_class: Vec<i64>,
    pub support_vectors: Vec<f32>,
    pub coefficients: Vec<f32>,
    pub rho: Vec<f32>,
    pub prob_a: Vec<f32>,
    pub prob_b: Vec<f32>,
    pub labels: Labels,
    pub post: PostTransform,
}

impl SvmClassifier {
    pub fn build(a: SvmClassifierAttributes) -> Result<SvmClassifier, BuildError> {
        let classes = a.labels.len();
        if classes < 2 {
            return Err(unsupported(
                "classlabels_ints",
                format!("{classes} class labels; a classifier of two or more classes is served"),
            ));
        }
        if a.prob_a.len() != a.prob_b.len() {
            return Err(invalid("prob_b", "prob_a and prob_b differ in length"));
        }
        if a.coefficients.is_empty() {
            return Err(invalid("coefficients", "is empty"));
        }
        let pairs = classes * (classes - 1) / 2;
        let vectors_per_class = a
            .vectors_per_class
            .iter()
            .map(|&v| usize::try_from(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("vectors_per_class", "holds a negative count"))?;
        let vectors: usize = vectors_per_class.iter().sum();
        let have_proba = !a.prob_a.is_empty();
        let (mode, features) = if vectors > 0 {
            if vectors_per_class.len() != classes {
                return Err(invalid(
                    "vectors_per_class",
                    format!("{} counts for {classes} classes", vectors_per_class.len()),
                ));
            }
            if a.support_vectors.is_empty() || a.support_vectors.len() % vectors != 0 {
                return Err(invalid(
                    "support_vectors",
                    format!(
                        "{} values are not a whole row per support vector ({vectors})",
                        a.support_vectors.len()
                    ),
                ));
            }
            if a.coefficients.len() < (classes - 1) * vectors {
                return Err(invalid(
                    "coefficients",
                    format!(
                        "{} values where (classes - 1) × vectors = {} are read",
                        a.coefficients.len(),
                        (classes - 1) * vectors
                    ),
                ));
            }
            if a.rho.len() < pairs {
                return Err(invalid(
                    "rho",
                    format!("{} values for {pairs} class pairs", a.rho.len()),
                ));
            }
            if have_proba && a.prob_a.len() < pairs {
                return Err(invalid(
                    "prob_a",
                    format!("{} values for {pairs} class pairs", a.prob_a.len()),
                ));
            }
            if !have_proba && classes == 2 && a.post == PostTransform::Probit {
                return Err(unsupported(
                    "post_transform",
                    "PROBIT on a binary SVC without probabilities, whose second score \
                     onnxruntime leaves unwritten",
                ));
            }
            let mut starts = Vec::with_capacity(classes);
            let mut at = 0;
            for &v in &vectors_per_class {
                starts.push(at);
                at += v;
            }
            let features = a.support_vectors.len() / vectors;
            (
                Mode::Svc {
                    support_vectors: a.support_vectors,
                    vectors_per_class,
                    starts,
                },
                features,
            )
        } else {
            if a.coefficients.len() % classes != 0 {
                return Err(invalid(
                    "coefficients",
                    format!(
                        "{} values are not a whole row per class ({classes})",
                        a.coefficients.len()
                    ),
                ));
            }
            if a.rho.is_empty() {
                return Err(invalid("rho", "is empty"));
            }
            (Mode::Linear, a.coefficients.len() / classes)
        };
        let kernel = match mode {
            // onnxruntime forces the linear kernel in liblinear mode.
            Mode::Linear => Kernel {
                kind: KernelKind::Linear,
                ..a.kernel
            },
            Mode::Svc { .. } => a.kernel,
        };
        Ok(SvmClassifier {
            kernel,
            mode,
            features,
            weights_all_positive: a.coefficients.iter().all(|&c| c >= 0.0),
            coefficients: a.coefficients,
            rho: a.rho,
            prob_a: a.prob_a,
            prob_b: a.prob_b,
            labels: a.labels,
            post: a.post,
        })
    }

    pub fn features(&self) -> usize {
        self.features
    }

    fn classes(&self) -> usize {
        self.labels.len()
    }

    fn have_proba(&self) -> bool {
        !self.prob_a.is_empty()
    }

    /// Scores per row: probabilities per class, or (SVC without them) one decision value per
    /// class pair, two for a binary model; liblinear mode: one per class.
    pub fn width(&self) -> usize {
        let classes = self.classes();
        match self.mode {
            Mode::Svc { .. } if !self.have_proba() => {
                if classes > 2 {
                    classes * (classes - 1) / 2
                } else {
                    2
                }
            }
            _ => classes,
        }
    }

    /// `x` is `rows × features()`; writes `rows × width()` scores and each row's label (an
    /// index into `labels`).
    pub fn run(&self, x: &[f32], scores: &mut [f32], picks: &mut [usize]) {
        let classes = self.classes();
        let width = self.width();
        let pairs = classes * (classes - 1) / 2;
        let mut kernels = Vec::new();
        let mut votes = vec![0u32; classes];
        let mut pair_scores = vec![0f32; pairs];
        let mut coupled = vec![0f32; classes * classes];
        for ((row, out), pick) in x
            .chunks_exact(self.features)
            .zip(scores.chunks_exact_mut(width))
            .zip(picks.iter_mut())
        {
            let max_weight;
            let maxclass;
            match &self.mode {
                Mode::Linear => {
                    for (o, w) in out
                        .iter_mut()
                        .zip(self.coefficients.chunks_exact(self.features))
                    {
                        *o = self.kernel.eval(row, w, self.rho[0]);
                    }
                    maxclass = first_max(out);
                    max_weight = out[maxclass];
                }
                Mode::Svc {
                    support_vectors,
                    vectors_per_class,
                    starts,
                } => {
                    let vectors = support_vectors.len() / self.features;
                    kernels.clear();
                    kernels.extend(
                        support_vectors
                            .chunks_exact(self.features)
                            .map(|v| self.kernel.eval(row, v, 0.0)),
                    );
                    votes.iter_mut().for_each(|v| *v = 0);
                    let mut k = 0;
                    for i in 0..classes - 1 {
                        for j in i + 1..classes {
                            let mut sum = 0f64;
                            let (si, ni) = (starts[i], vectors_per_class[i]);
                            let (sj, nj) = (starts[j], vectors_per_class[j]);
                            let row_j = &self.coefficients[vectors * (j - 1)..];
                            for m in si..si + ni {
                                sum += f64::from(row_j[m] * kernels[m]);
                            }
                            let row_i = &self.coefficients[vectors * i..];
                            for m in sj..sj + nj {
                                sum += f64::from(row_i[m] * kernels[m]);
                            }
                            sum += f64::from(self.rho[k]);
                            pair_scores[k] = sum as f32;
                            votes[if sum > 0.0 { i } else { j }] += 1;
                            k += 1;
                        }
                    }
                    maxclass = first_max_u32(&votes);
                    max_weight = 0.0;
                    if self.have_proba() {
                        coupled.iter_mut().for_each(|c| *c = 0.0);
                        let mut k = 0;
                        for i in 0..classes - 1 {
                            for j in i + 1..classes {
                                let p = sigmoid_probability(
                                    pair_scores[k],
                                    self.prob_a[k],
                                    self.prob_b[k],
                                );
                                let p = p.clamp(1.0e-7, 1.0 - 1.0e-7);
                                coupled[i * classes + j] = p;
                                coupled[j * classes + i] = 1.0 - p;
                                k += 1;
                            }
                        }
                        multiclass_probability(classes, &coupled, out);
                    } else {
                        out[..pairs].copy_from_slice(&pair_scores);
                    }
                }
            }
            *pick = if pairs == 1 && !self.have_proba() {
                // onnxruntime's ChooseClass for two labels, with no probabilities.
                if (self.weights_all_positive && max_weight >= 0.5)
                    || (max_weight > 0.0 && !self.weights_all_positive)
                {
                    1
                } else {
                    maxclass
                }
            } else {
                maxclass
            };
            let svc_without_proba = matches!(self.mode, Mode::Svc { .. }) && !self.have_proba();
            if svc_without_proba && classes == 2 {
                let s = out[0];
                if self.post == PostTransform::None {
                    out[0] = -s;
                } else {
                    out[0] = 1.0 - s;
                }
                out[1] = s;
            } else {
                transform(self.post, out);
            }
        }
    }
}

/// A built `SVMRegressor`.
#[derive(Debug)]
pub struct SvmRegressor {
    kernel: Kernel,
    /// `[vectors, features]`; empty in liblinear mode.
    support_vectors: Vec<f32>,
    features: usize,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
}

impl SvmRegressor {
    pub fn build(
        kernel: Kernel,
        n_supports: i64,
        support_vectors: Vec<f32>,
        coefficients: Vec<f32>,
        rho: &[f32],
        one_class: bool,
    ) -> Result<SvmRegressor, BuildError> {
        if coefficients.is_empty() {
            return Err(invalid("coefficients", "is empty"));
        }
        let &rho = rho.first().ok_or_else(|| invalid("rho", "is empty"))?;
        let vectors = usize::try_from(n_supports)
            .map_err(|_| invalid("n_supports", format!("{n_supports} is negative")))?;
        let (kernel, features) = if vectors > 0 {
            if support_vectors.is_empty() || support_vectors.len() % vectors != 0 {
                return Err(invalid(
                    "support_vectors",
                    format!(
                        "{} values are not a whole row per support vector ({vectors})",
                        support_vectors.len()
                    ),
                ));
            }
            if coefficients.len() < vectors {
                return Err(invalid(
                    "coefficients",
                    format!(
                        "{} values for {vectors} support vectors",
                        coefficients.len()
                    ),
                ));
            }
            (kernel, support_vectors.len() / vectors)
        } else {
            let linear = Kernel {
                kind: KernelKind::Linear,
                ..kernel
            };
            (linear, coefficients.len())
        };
        Ok(SvmRegressor {
            kernel,
            support_vectors: if vectors > 0 {
                support_vectors
            } else {
                Vec::new()
            },
            features,
            coefficients,
            rho,
            one_class,
        })
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// `x` is `rows × features()`; writes one value per row.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        for (row, o) in x.chunks_exact(self.features).zip(out.iter_mut()) {
            *o = if self.support_vectors.is_empty() {
                self.kernel.eval(row, &self.coefficients, self.rho)
            } else {
                let mut sum = 0f32;
                for (v, c) in self
                    .support_vectors
                    .chunks_exact(self.features)
                    .zip(&self.coefficients)
                {
                    sum += self.kernel.eval(row, v, 0.0) * c;
                }
                sum + self.rho
            };
            if self.one_class {
                *o = if *o > 0.0 { 1.0 } else { -1.0 };
            }
        }
    }
}

fn first_max_u32(values: &[u32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// libsvm's Platt scaling as onnxruntime writes it.
fn sigmoid_probability(score: f32, a: f32, b: f32) -> f32 {
    1.0 - logistic(score * a + b)
}

/// libsvm's pairwise coupling (Wu, Lin and Weng, method 2), in `f32` as onnxruntime runs it:
/// `r` is `k × k` pairwise probabilities, `p` receives `k` class probabilities.
fn multiclass_probability(k: usize, r: &[f32], p: &mut [f32]) {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        p[i] = 1.0 / k as f32;
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..k {
            qp[i] = 0.0;
            for j in 0..k {
                qp[i] += q[i * k + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let mut max_error = 0f32;
        for &v in qp.iter() {
            let error = (v - pqp).abs();
            if error > max_error {
                max_error = error;
            }
        }
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_coupling_of_two_classes_gives_the_pair_probability() {
        let mut p = [0f32; 2];
        multiclass_probability(2, &[0.0, 0.8, 0.2, 0.0], &mut p);
        assert!(
            (p[0] - 0.8).abs() < 1e-3 && (p[1] - 0.2).abs() < 1e-3,
            "{p:?}"
        );
    }

    #[test]
    fn a_linear_svm_regressor_adds_rho() {
        let k = Kernel::new(KernelKind::Rbf, &[]).unwrap();
        let r = SvmRegressor::build(k, 0, vec![], vec![2.0, 1.0], &[0.5], false).unwrap();
        let mut out = [0.0];
        r.run(&[1.0, 3.0], &mut out);
        assert_eq!(out, [5.5], "liblinear mode ignores the kernel type");
    }
}
