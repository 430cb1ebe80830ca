//! A model version's training-data summary: `baseline.json`.
//!
//! `cairn baseline` writes it, and so may a training pipeline in any language, so its JSON schema
//! is a contract:
//!
//! ```json
//! {
//!   "format": 1,
//!   "rows": 150,
//!   "features": { "<name>": <FeatureBaseline>, ... },
//!   "outputs":  { "<name>": <FeatureBaseline>, ... },
//!   "feature_order": ["<name>", ...]
//! }
//! ```
//!
//! `feature_order` (optional) lists the features in the order of the data's columns: the order
//! in which a model's input holds them. A monitored model whose `config.toml` names no features
//! takes their names from it.
//!
//! `rows` is the number of rows summarized. Features and outputs are objects keyed by column name
//! (written sorted by name). A `FeatureBaseline` is one of:
//!
//! ```json
//! {"kind": "numeric", "count": 148, "missing": 2,
//!  "min": -2.1, "max": 3.4, "mean": 0.02, "std": 0.98,
//!  "edges": [9 numbers], "proportions": [10 numbers],
//!  "sample": [numbers, ascending], "sample_exact": true}
//!
//! {"kind": "categorical", "count": 150, "missing": 0,
//!  "frequencies": {"<category>": 97, "<other>": 53}}
//! ```
//!
//! - `count` is the number of valid values and `missing` the rest of the `rows`
//!   (`count + missing == rows`). A numeric value is valid when it is finite: NaN is missing, and
//!   so are ±infinity, which JSON cannot hold and no mean or quantile can summarize.
//! - `min`, `max`, `mean`, `std` (`np.std`, ddof 0), `edges` (`np.quantile(values, [0.1, …,
//!   0.9])`, repeated edges kept) and `proportions` (the share of the baseline's own values in each
//!   of the ten bins `edges` define, see [`crate::stats::bin_index`]) are computed from **all**
//!   valid values.
//! - `sample` holds every valid value when there are at most `sample_size` of them (default
//!   10,000; then `sample_exact` is true and KS and Wasserstein against the baseline are exact);
//!   beyond, a uniform random sample of `sample_size` of them (reservoir sampling, seeded, so the
//!   same input and seed give the same sample) and `sample_exact` is false. It is stored sorted.
//! - With no valid values, `min`, `max`, `mean` and `std` are `null` and `edges`, `proportions`
//!   and `sample` are empty. `mean` and `std` are also `null` if they overflow (values near
//!   `f64::MAX`).
//! - `frequencies` maps each category seen to its (non-zero) count; it sums to `count`. Built
//!   from columns ([`Baseline::from_columns`]), categories are bounded as a live window's are
//!   ([`crate::category`]): cut to their first 256 bytes, and past 1,000 per feature the rarest
//!   counted together as `"(other)"`. A file written elsewhere may hold more; it is read as is.
//!
//! [`Baseline::from_json`] rejects a file that breaks any of these rules, or whose `format` is not
//! 1, with a typed [`BaselineError`]; unknown keys are rejected too, so that a misspelled key
//! cannot silently drop a statistic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::column::{Column, Columns, FeatureKind};
use crate::stats::{self, SortedValues, BINS};

/// The `format` this version writes and reads.
pub const FORMAT: u32 = 1;

/// The default number of values kept per numeric feature for KS and Wasserstein.
pub const DEFAULT_SAMPLE_SIZE: usize = 10_000;

/// How far the stored proportions may sum from 1 (they are rounded decimals in a file another
/// program may have written).
const PROPORTION_SUM_TOLERANCE: f64 = 1e-6;

/// A version's training-data summary (see the module documentation for the schema).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub format: u32,
    pub rows: u64,
    pub features: BTreeMap<String, FeatureBaseline>,
    pub outputs: BTreeMap<String, FeatureBaseline>,
    /// The features in the data's column order (optional; see the module documentation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_order: Vec<String>,
}

/// One feature's (or output's) summary, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureBaseline {
    Numeric(NumericBaseline),
    Categorical(CategoricalBaseline),
}

impl FeatureBaseline {
    pub fn kind(&self) -> FeatureKind {
        match self {
            FeatureBaseline::Numeric(_) => FeatureKind::Numeric,
            FeatureBaseline::Categorical(_) => FeatureKind::Categorical,
        }
    }

    /// Valid values.
    pub fn count(&self) -> u64 {
        match self {
            FeatureBaseline::Numeric(n) => n.count,
            FeatureBaseline::Categorical(c) => c.count,
        }
    }

    /// Missing values.
    pub fn missing(&self) -> u64 {
        match self {
            FeatureBaseline::Numeric(n) => n.missing,
            FeatureBaseline::Categorical(c) => c.missing,
        }
    }

    /// Missing over all rows; `None` when there were no rows.
    pub fn missing_rate(&self) -> Option<f64> {
        let rows = self.count() + self.missing();
        (rows > 0).then(|| self.missing() as f64 / rows as f64)
    }
}

/// A numeric feature's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericBaseline {
    pub count: u64,
    pub missing: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// Population standard deviation (ddof 0), as `np.std`.
    pub std: Option<f64>,
    /// The nine inner quantile-bin edges.
    pub edges: Vec<f64>,
    /// The baseline's own proportion in each of the ten bins.
    pub proportions: Vec<f64>,
    /// Valid values, ascending: all of them, or a uniform sample.
    pub sample: Vec<f64>,
    /// Whether `sample` holds every valid value.
    pub sample_exact: bool,
}

/// A categorical feature's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalBaseline {
    pub count: u64,
    pub missing: u64,
    pub frequencies: BTreeMap<String, u64>,
}

/// How a baseline is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineOptions {
    /// Numeric values kept per feature for KS and Wasserstein (default 10,000; 0 is taken as 1).
    /// Up to this many valid values the sample is exact; the exact KS p-value is computed up to
    /// 10,000 values a side, so raising it past that makes KS asymptotic for every window.
    pub sample_size: usize,
    /// Seed of the reservoir sampler. Every column's sampler starts from it, so columns with the
    /// same number of valid values sample the same rows.
    pub seed: u64,
}

impl Default for BaselineOptions {
    fn default() -> Self {
        BaselineOptions {
            sample_size: DEFAULT_SAMPLE_SIZE,
            seed: 0,
        }
    }
}

/// Why a baseline file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("baseline format {found} is not supported (this version reads format {FORMAT})")]
    UnsupportedFormat { found: String },
    #[error("baseline {section} `{name}` is inconsistent: {problem}")]
    Inconsistent {
        section: &'static str,
        name: String,
        problem: String,
    },
}

impl Baseline {
    /// Summarizes the columns. `rows` is the longest column's length; a shorter column's missing
    /// tail counts as missing values. A name given twice keeps its last column.
    pub fn from_columns(features: &Columns, outputs: &Columns, options: &BaselineOptions) -> Self {
        let rows = features
            .iter()
            .chain(outputs.iter())
            .map(|(_, c)| c.len())
            .max()
            .unwrap_or(0);
        let summarize_all = |columns: &Columns| {
            columns
                .iter()
                .map(|(name, column)| (name.clone(), summarize(column, rows, options)))
                .collect()
        };
        let mut feature_order: Vec<String> = Vec::new();
        for (name, _) in features {
            if !feature_order.contains(name) {
                feature_order.push(name.clone());
            }
        }
        Baseline {
            format: FORMAT,
            rows: rows as u64,
            features: summarize_all(features),
            outputs: summarize_all(outputs),
            feature_order,
        }
    }

    /// Parses and validates `baseline.json`.
    pub fn from_json(json: &str) -> Result<Self, BaselineError> {
        #[derive(Deserialize)]
        struct Probe {
            format: serde_json::Value,
        }
        // Read the format first, so that a newer file is reported as such rather than as a
        // schema mismatch.
        let probe: Probe = serde_json::from_str(json)?;
        if probe.format.as_u64() != Some(u64::from(FORMAT)) {
            return Err(BaselineError::UnsupportedFormat {
                found: probe.format.to_string(),
            });
        }
        let baseline: Baseline = serde_json::from_str(json)?;
        baseline.validate()?;
        Ok(baseline)
    }

    /// Validates and writes `baseline.json` (pretty-printed).
    pub fn to_json(&self) -> Result<String, BaselineError> {
        self.validate()?;
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Checks the rules of the module documentation.
    pub fn validate(&self) -> Result<(), BaselineError> {
        if self.format != FORMAT {
            return Err(BaselineError::UnsupportedFormat {
                found: self.format.to_string(),
            });
        }
        if !self.feature_order.is_empty() {
            let mut seen = std::collections::BTreeSet::new();
            for name in &self.feature_order {
                if !self.features.contains_key(name) || !seen.insert(name) {
                    return Err(BaselineError::Inconsistent {
                        section: "feature_order",
                        name: name.clone(),
                        problem: "is not a feature, or is listed twice".into(),
                    });
                }
            }
            if seen.len() != self.features.len() {
                return Err(BaselineError::Inconsistent {
                    section: "feature_order",
                    name: String::new(),
                    problem: format!(
                        "lists {} of the {} features",
                        seen.len(),
                        self.features.len()
                    ),
                });
            }
        }
        for (section, map) in [("feature", &self.features), ("output", &self.outputs)] {
            for (name, feature) in map {
                validate_feature(feature, self.rows).map_err(|problem| {
                    BaselineError::Inconsistent {
                        section,
                        name: name.clone(),
                        problem,
                    }
                })?;
            }
        }
        Ok(())
    }
}

fn summarize(column: &Column, rows: usize, options: &BaselineOptions) -> FeatureBaseline {
    match column {
        Column::Numeric(values) => {
            FeatureBaseline::Numeric(summarize_numeric(values, rows, options))
        }
        Column::Categorical(values) => {
            let counts = stats::category_counts(values);
            let count = counts.valid();
            FeatureBaseline::Categorical(CategoricalBaseline {
                count,
                missing: (rows as u64).saturating_sub(count),
                frequencies: counts.counts,
            })
        }
    }
}

fn summarize_numeric(values: &[f64], rows: usize, options: &BaselineOptions) -> NumericBaseline {
    let valid: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let count = valid.len();
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let mean = finite(stats::mean_of_valid(&valid));
    let std = finite(stats::std_of_valid(&valid));
    let sample_size = options.sample_size.max(1);
    let (sample, sample_exact) = if count <= sample_size {
        (None, true)
    } else {
        (
            Some(reservoir_sample(&valid, sample_size, options.seed)),
            false,
        )
    };
    let sorted = SortedValues::from_vec(valid);
    let edges = stats::quantile_edges(&sorted)
        .map(Vec::from)
        .unwrap_or_default();
    let proportions = stats::bin_proportions(&edges, &sorted).unwrap_or_default();
    let (min, max) = (sorted.min(), sorted.max());
    let sample = match sample {
        Some(sample) => SortedValues::from_vec(sample).into_vec(),
        None => sorted.into_vec(),
    };
    NumericBaseline {
        count: count as u64,
        missing: (rows.saturating_sub(count)) as u64,
        min,
        max,
        mean,
        std,
        edges,
        proportions,
        sample,
        sample_exact,
    }
}

/// A uniform sample of `k` of `values` by Algorithm R (Waterman; Knuth vol. 2, 3.4.2): keep the
/// first `k`, then replace a random slot with the i-th value with probability `k / (i + 1)`.
/// Deterministic in `seed`.
pub fn reservoir_sample(values: &[f64], k: usize, seed: u64) -> Vec<f64> {
    let k = k.min(values.len());
    let mut reservoir = values[..k].to_vec();
    let mut rng = SplitMix64::new(seed);
    for (i, &v) in values.iter().enumerate().skip(k) {
        let j = rng.below(i as u64 + 1) as usize;
        if let Some(slot) = reservoir.get_mut(j) {
            *slot = v;
        }
    }
    reservoir
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, well-mixed 64-bit generator; plenty for
/// choosing sample slots, and fully specified, so samples are reproducible across platforms.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`) without modulo bias, by Lemire's multiply-and-reject.
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

fn validate_feature(feature: &FeatureBaseline, rows: u64) -> Result<(), String> {
    if feature.count().checked_add(feature.missing()) != Some(rows) {
        return Err(format!(
            "count {} + missing {} is not the baseline's {rows} rows",
            feature.count(),
            feature.missing()
        ));
    }
    match feature {
        FeatureBaseline::Numeric(n) => validate_numeric(n),
        FeatureBaseline::Categorical(c) => validate_categorical(c),
    }
}

fn validate_numeric(n: &NumericBaseline) -> Result<(), String> {
    let all_finite = |name: &str, values: &[f64]| {
        if values.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(format!("{name} holds a value that is not finite"))
        }
    };
    if n.count == 0 {
        let empty = n.min.is_none()
            && n.max.is_none()
            && n.mean.is_none()
            && n.std.is_none()
            && n.edges.is_empty()
            && n.proportions.is_empty()
            && n.sample.is_empty();
        return if empty {
            Ok(())
        } else {
            Err("no valid values, yet min/max/mean/std/edges/proportions/sample are set".into())
        };
    }
    let (min, max) = match (n.min, n.max) {
        (Some(min), Some(max)) if min.is_finite() && max.is_finite() && min <= max => (min, max),
        _ => return Err("min and max must be finite numbers with min <= max".into()),
    };
    for (name, value) in [("mean", n.mean), ("std", n.std)] {
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(format!("{name} is not finite"));
        }
    }
    if n.std.is_some_and(|s| s < 0.0) {
        return Err("std is negative".into());
    }
    if n.edges.len() != BINS - 1 {
        return Err(format!("{} edges, expected {}", n.edges.len(), BINS - 1));
    }
    all_finite("edges", &n.edges)?;
    if n.proportions.len() != BINS {
        return Err(format!(
            "{} proportions, expected {BINS}",
            n.proportions.len()
        ));
    }
    if n.proportions.iter().any(|p| !(0.0..=1.0).contains(p)) {
        return Err("a proportion is outside [0, 1]".into());
    }
    let sum: f64 = n.proportions.iter().sum();
    if (sum - 1.0).abs() > PROPORTION_SUM_TOLERANCE {
        return Err(format!("proportions sum to {sum}, not 1"));
    }
    if n.sample.is_empty() || n.sample.len() as u64 > n.count {
        return Err(format!(
            "sample has {} values, expected 1 to count ({})",
            n.sample.len(),
            n.count
        ));
    }
    if n.sample_exact && n.sample.len() as u64 != n.count {
        return Err(format!(
            "sample_exact, yet the sample has {} of {} values",
            n.sample.len(),
            n.count
        ));
    }
    all_finite("sample", &n.sample)?;
    if n.sample.iter().any(|&v| v < min || v > max) {
        return Err("a sample value lies outside [min, max]".into());
    }
    Ok(())
}

fn validate_categorical(c: &CategoricalBaseline) -> Result<(), String> {
    if let Some((category, _)) = c.frequencies.iter().find(|(_, &n)| n == 0) {
        return Err(format!("category `{category}` has frequency 0"));
    }
    let sum = c
        .frequencies
        .values()
        .try_fold(0u64, |acc, &n| acc.checked_add(n));
    if sum != Some(c.count) {
        return Err(format!("frequencies do not sum to count {}", c.count));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(1);
        for n in [1u64, 2, 3, 10, 1 << 40] {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
            }
        }
    }

    #[test]
    fn reservoir_is_deterministic_and_a_subset() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let a = reservoir_sample(&values, 10, 42);
        assert_eq!(a, reservoir_sample(&values, 10, 42));
        assert_ne!(a, reservoir_sample(&values, 10, 43));
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|v| values.contains(v)));
        assert_eq!(reservoir_sample(&values[..3], 10, 1), vec![0.0, 1.0, 2.0]);
    }
}
