//! Data prep, fitted on the training split only: imputation, standardisation and one-hot
//! encoding with a capped category list and an unknown bucket.
//!
//! [`Prep::transform`] computes in FP32 with exactly the operations the exported graph runs
//! (`Where(IsNaN(x), fill, x)`, then `(x - mean) / scale`, then `Equal` against each category),
//! so what the model was trained on and what it sees when served cannot differ by a bit.
//! Columns of the prepared matrix: the numeric features in order, then every category slot of
//! every categorical feature, then one unknown bucket per categorical feature.

use serde::{Deserialize, Serialize};

use crate::config::{Impute, PrepConfig};
use crate::data::Frame;

/// The fitted prep of every feature, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prep {
    pub features: Vec<FeaturePrep>,
}

/// One feature's fitted prep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeaturePrep {
    Numeric {
        name: String,
        /// What a missing value becomes.
        fill: f32,
        mean: f32,
        /// The standard deviation (1 when constant or not standardised).
        scale: f32,
    },
    Categorical {
        name: String,
        fill: f32,
        /// The kept codes, ascending; any other code goes to the unknown bucket.
        categories: Vec<f32>,
    },
}

impl Prep {
    /// Fits on the rows `train` of `frame`.
    pub fn fit(
        frame: &Frame,
        train: &[usize],
        config: &PrepConfig,
        categorical: &[String],
    ) -> Prep {
        let features = frame
            .features
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let values: Vec<f32> = train
                    .iter()
                    .map(|&i| frame.row(i)[j] as f32)
                    .filter(|v| !v.is_nan())
                    .collect();
                if categorical.contains(name) {
                    fit_categorical(name, &values, train.len(), config)
                } else {
                    fit_numeric(name, &values, train.len(), config)
                }
            })
            .collect();
        Prep { features }
    }

    pub fn numeric(&self) -> impl Iterator<Item = (usize, &FeaturePrep)> {
        self.features
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f, FeaturePrep::Numeric { .. }))
    }

    pub fn categorical(&self) -> impl Iterator<Item = (usize, &FeaturePrep)> {
        self.features
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f, FeaturePrep::Categorical { .. }))
    }

    /// Columns of the prepared matrix.
    pub fn width(&self) -> usize {
        self.features
            .iter()
            .map(|f| match f {
                FeaturePrep::Numeric { .. } => 1,
                FeaturePrep::Categorical { categories, .. } => categories.len() + 1,
            })
            .sum()
    }

    /// The prepared rows `rows` of `frame`, row-major `[rows.len(), width()]`.
    pub fn transform(&self, frame: &Frame, rows: &[usize]) -> Vec<f32> {
        let width = self.width();
        let mut out = Vec::with_capacity(rows.len() * width);
        let cats: Vec<(usize, f32, &[f32])> = self
            .categorical()
            .map(|(j, f)| match f {
                FeaturePrep::Categorical {
                    fill, categories, ..
                } => (j, *fill, categories.as_slice()),
                FeaturePrep::Numeric { .. } => unreachable!(),
            })
            .collect();
        for &i in rows {
            let row = frame.row(i);
            for (j, f) in self.numeric() {
                if let FeaturePrep::Numeric {
                    fill, mean, scale, ..
                } = f
                {
                    let v = impute(row[j] as f32, *fill);
                    out.push((v - mean) / scale);
                }
            }
            for &(j, fill, categories) in &cats {
                let v = impute(row[j] as f32, fill);
                out.extend(
                    categories
                        .iter()
                        .map(|c| if v == *c { 1.0f32 } else { 0.0 }),
                );
            }
            for &(j, fill, categories) in &cats {
                let v = impute(row[j] as f32, fill);
                let known: f32 = categories
                    .iter()
                    .map(|c| if v == *c { 1.0f32 } else { 0.0 })
                    .sum();
                out.push(1.0 - known);
            }
        }
        out
    }
}

fn impute(v: f32, fill: f32) -> f32 {
    if v.is_nan() {
        fill
    } else {
        v
    }
}

fn fit_numeric(name: &str, values: &[f32], rows: usize, config: &PrepConfig) -> FeaturePrep {
    let fill = if values.is_empty() {
        config.fill_value as f32
    } else {
        match config.impute {
            Impute::Mean => mean(values.iter().copied()) as f32,
            Impute::Median => median(values),
            Impute::MostFrequent => most_frequent(values),
            Impute::Constant => config.fill_value as f32,
        }
    };
    let (mean_v, scale) = if config.standardize {
        // Over the imputed column, as an imputer followed by a scaler sees it.
        let missing = rows - values.len();
        let all = values
            .iter()
            .copied()
            .chain(std::iter::repeat_n(fill, missing));
        let m = mean(all.clone());
        let var = all.map(|v| (v as f64 - m).powi(2)).sum::<f64>() / rows.max(1) as f64;
        let sd = var.sqrt() as f32;
        (m as f32, if sd > 0.0 && sd.is_finite() { sd } else { 1.0 })
    } else {
        (0.0, 1.0)
    };
    FeaturePrep::Numeric {
        name: name.to_string(),
        fill,
        mean: mean_v,
        scale,
    }
}

fn fit_categorical(name: &str, values: &[f32], rows: usize, config: &PrepConfig) -> FeaturePrep {
    let fill = match config.impute_categorical {
        Impute::Constant => config.fill_value as f32,
        _ if values.is_empty() => config.fill_value as f32,
        _ => most_frequent(values),
    };
    let missing = rows - values.len();
    let mut counts = counts(
        values
            .iter()
            .copied()
            .chain(std::iter::repeat_n(fill, missing)),
    );
    // The most frequent first, ties to the smaller code; keep the cap, then order by code.
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
    counts.truncate(config.max_categories);
    let mut categories: Vec<f32> = counts.into_iter().map(|(v, _)| v).collect();
    categories.sort_by(f32::total_cmp);
    FeaturePrep::Categorical {
        name: name.to_string(),
        fill,
        categories,
    }
}

fn mean(values: impl Iterator<Item = f32>) -> f64 {
    let (sum, n) = values.fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// numpy's median: the mean of the two middle values for an even count.
fn median(values: &[f32]) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        ((v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0) as f32
    }
}

/// scikit-learn's most frequent: ties go to the smallest value.
fn most_frequent(values: &[f32]) -> f32 {
    let mut c = counts(values.iter().copied());
    c.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
    c.first().map_or(0.0, |(v, _)| *v)
}

fn counts(values: impl Iterator<Item = f32>) -> Vec<(f32, usize)> {
    let mut v: Vec<f32> = values.collect();
    v.sort_by(f32::total_cmp);
    let mut out: Vec<(f32, usize)> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some((y, n)) if *y == x => *n += 1,
            _ => out.push((x, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SourceSummary, Target};

    fn frame(x: Vec<f64>, features: &[&str]) -> Frame {
        let rows = x.len() / features.len();
        Frame {
            features: features.iter().map(|s| s.to_string()).collect(),
            x,
            target: Target::Values(vec![0.0; rows]),
            time: None,
            split: None,
            summary: SourceSummary::default(),
        }
    }

    #[test]
    fn prep_is_fitted_on_the_training_rows_only() {
        // Rows 0..4 train; row 4 (huge values, an unseen category) is held out.
        let nan = f64::NAN;
        let f = frame(
            vec![1.0, 7.0, 2.0, 7.0, nan, 8.0, 5.0, nan, 1e6, 99.0],
            &["a", "c"],
        );
        let config = PrepConfig::default();
        let p = Prep::fit(&f, &[0, 1, 2, 3], &config, &["c".to_string()]);
        let FeaturePrep::Numeric {
            fill, mean, scale, ..
        } = &p.features[0]
        else {
            panic!()
        };
        // Mean of 1, 2, 5 = 8/3 fills the gap; then mean and sd of [1, 2, 8/3, 5].
        assert!((fill - 8.0 / 3.0).abs() < 1e-6);
        assert!((mean - 8.0 / 3.0).abs() < 1e-6);
        let sd = ((1.0f64 - 8.0 / 3.0).powi(2)
            + (2.0f64 - 8.0 / 3.0).powi(2)
            + 0.0
            + (5.0f64 - 8.0 / 3.0).powi(2))
            / 4.0;
        assert!((*scale as f64 - sd.sqrt()).abs() < 1e-6);
        let FeaturePrep::Categorical {
            fill, categories, ..
        } = &p.features[1]
        else {
            panic!()
        };
        assert_eq!(*fill, 7.0, "most frequent code in train");
        assert_eq!(
            categories,
            &vec![7.0, 8.0],
            "the held-out 99 is not a category"
        );
        let out = p.transform(&f, &[4]);
        // numeric, then slots [7, 8], then unknown: 99 is unknown.
        assert_eq!(out.len(), p.width());
        assert_eq!(&out[1..], &[0.0, 0.0, 1.0]);
        let out = p.transform(&f, &[3]);
        assert_eq!(
            &out[1..],
            &[1.0, 0.0, 0.0],
            "missing category filled with 7"
        );
    }

    #[test]
    fn imputers_follow_numpy_and_scikit_learn() {
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(most_frequent(&[3.0, 1.0, 3.0, 1.0, 2.0]), 1.0);
    }

    #[test]
    fn the_category_cap_keeps_the_most_frequent() {
        let f = frame(vec![1.0, 1.0, 1.0, 2.0, 2.0, 3.0], &["c"]);
        let config = PrepConfig {
            max_categories: 2,
            ..PrepConfig::default()
        };
        let p = Prep::fit(&f, &[0, 1, 2, 3, 4, 5], &config, &["c".to_string()]);
        let FeaturePrep::Categorical { categories, .. } = &p.features[0] else {
            panic!()
        };
        assert_eq!(categories, &vec![1.0, 2.0]);
        assert_eq!(p.transform(&f, &[5]), vec![0.0, 0.0, 1.0]);
    }
}
