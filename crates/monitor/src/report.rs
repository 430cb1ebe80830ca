//! A drift report: a window of live rows compared, feature by feature, with a [`Baseline`].
//!
//! [`drift`] computes, for every feature and output present on both sides with the same kind:
//!
//! - numeric: PSI and Jensen–Shannon over the baseline's ten quantile bins (its `edges` and
//!   `proportions`), two-sample KS and the Wasserstein distance against the baseline's `sample`
//!   (raw, and over the baseline's standard deviation), the out-of-range rate against the
//!   baseline's min/max, and the missing rates;
//! - categorical: PSI and Jensen–Shannon over the category proportions, the chi-squared test of
//!   the 2×k table of counts, the unseen rate and the unseen/vanished categories, and the missing
//!   rates.
//!
//! As in the baseline, a numeric window value is valid when it is finite; NaN and ±infinity are
//! missing. A column shorter than the window's longest counts its missing tail as missing.
//!
//! The report serializes to:
//!
//! ```json
//! {"rows": 500,
//!  "features": {"<name>": {"kind": "numeric", "psi": 0.03, "js": 0.05,
//!                          "ks": {"statistic": 0.04, "pvalue": 0.41},
//!                          "wasserstein": 0.02, "wasserstein_norm": 0.02,
//!                          "missing_rate_baseline": 0.0, "missing_rate_window": 0.0,
//!                          "out_of_range_rate": 0.0, "drifted": false, "violations": [],
//!                          "histogram": {"edges": [9 numbers], "baseline": [10 numbers],
//!                                        "window": [10 numbers]}},
//!               "<name>": {"kind": "categorical", "psi": 0.01, "js": 0.03,
//!                          "chi2": {"statistic": 1.2, "dof": 2, "pvalue": 0.55},
//!                          "missing_rate_baseline": 0.0, "missing_rate_window": 0.0,
//!                          "unseen_rate": 0.0, "unseen": [], "unseen_count": 0,
//!                          "vanished": [], "vanished_count": 0,
//!                          "drifted": false, "violations": [],
//!                          "histogram": {"categories": ["a", "b"], "baseline": [0.6, 0.4],
//!                                        "window": [0.5, 0.5]}}},
//!  "outputs": {...},
//!  "drifted": ["<feature or output names that drifted>"],
//!  "missing_in_baseline": ["<names in the window only>"],
//!  "missing_in_window": ["<names in the baseline only>"],
//!  "thresholds": {"psi": 0.2, "alpha": 0.01, "js": null, ..., "comparisons": 5,
//!                 "alpha_corrected": 0.002}}
//! ```
//!
//! `histogram` holds what a chart of the feature draws: the very proportions PSI and
//! Jensen–Shannon compared. A numeric feature's bins are the baseline's ten quantile bins: bin `i`
//! holds values `v` with `edges[i-1] <= v < edges[i]`, the first bin is open below and the last
//! open above. A categorical feature's categories are the sorted union of both sides; past
//! [`MAX_HISTOGRAM_CATEGORIES`] the most frequent ones are kept and the rest summed under
//! `"rest": {"categories": <how many>, "baseline": p, "window": p}`. A side without valid values
//! has `null` proportions.
//!
//! Categorical values are bounded as [`crate::category`] says: each cut to its first 256 bytes
//! (ending in `…`), at most 1,000 categories per feature and side (the window's named after the
//! baseline's; the rarest beyond count as `"(other)"`), and `unseen` and `vanished` list at most
//! 20 names each (the heaviest), with `unseen_count` and `vanished_count` saying how many there
//! are in all. A report's size is therefore bounded by its number of features, whatever the
//! values were.
//!
//! Keys that do not apply to a kind are left out; a statistic that applies but is undefined for
//! this window (say, KS when the window has no valid value) is `null`. A feature whose kind
//! differs between the baseline and the window is not compared: its entry is
//! `{"kind": <the baseline's kind>, "error": "...", "drifted": false, "violations": []}`, with no
//! histogram.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};

use crate::baseline::{Baseline, CategoricalBaseline, FeatureBaseline, NumericBaseline};
use crate::column::{Column, Columns, FeatureKind};
use crate::stats::{self, Chi2Test, KsMethod, KsTest, SortedValues};

pub use cairn_core::config::{ThresholdError, Thresholds};

/// The thresholds a report applied, with the Bonferroni-corrected significance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppliedThresholds {
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// `m`: the features and outputs compared (present on both sides with the same kind).
    pub comparisons: usize,
    /// `alpha / m` (`alpha` itself when nothing was compared).
    pub alpha_corrected: f64,
}

/// A statistic that can put a feature over its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    Psi,
    Js,
    Ks,
    Chi2,
    WassersteinNorm,
    OutOfRangeRate,
    UnseenRate,
    MissingRateIncrease,
}

impl Statistic {
    /// The name the report's JSON gives it, which is also what `[retrain] statistics` lists.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Psi => "psi",
            Statistic::Js => "js",
            Statistic::Ks => "ks",
            Statistic::Chi2 => "chi2",
            Statistic::WassersteinNorm => "wasserstein_norm",
            Statistic::OutOfRangeRate => "out_of_range_rate",
            Statistic::UnseenRate => "unseen_rate",
            Statistic::MissingRateIncrease => "missing_rate_increase",
        }
    }
}

/// One feature's (or output's) comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub kind: FeatureKind,
    #[serde(flatten)]
    pub comparison: Comparison,
    /// Whether any enabled statistic is violated.
    pub drifted: bool,
    /// The violated statistics.
    pub violations: Vec<Statistic>,
    /// The proportions compared, for charts; `None` for a feature that could not be compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<Histogram>,
}

/// The most categories a histogram lists one by one. A categorical feature may have thousands
/// (identifiers, free text): every report kept in memory and every chart would grow with them,
/// while a chart of more bars than this is unreadable anyway.
pub const MAX_HISTOGRAM_CATEGORIES: usize = 40;

/// One feature's distribution on both sides, as PSI and Jensen–Shannon compared it. A side is
/// `None` when it has no valid values (or, numeric, when the baseline has no bins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Histogram {
    Numeric {
        /// The baseline's nine inner edges; the outer two bins are open-ended.
        edges: Vec<f64>,
        baseline: Option<Vec<f64>>,
        window: Option<Vec<f64>>,
    },
    Categorical {
        /// Sorted; the most frequent [`MAX_HISTOGRAM_CATEGORIES`] when there are more.
        categories: Vec<String>,
        baseline: Option<Vec<f64>>,
        window: Option<Vec<f64>>,
        /// The categories left out, summed.
        #[serde(skip_serializing_if = "Option::is_none")]
        rest: Option<RestOfCategories>,
    },
}

/// The categories a histogram leaves out, and their summed proportions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestOfCategories {
    pub categories: usize,
    pub baseline: Option<f64>,
    pub window: Option<f64>,
}

/// The statistics of one feature, by kind.
///
/// Read back, the variants are tried in this order, which is what tells them apart: only an
/// error entry has `error`, only a categorical one `unseen` and `vanished`; what has neither is
/// numeric (every numeric key may be null, so none can be required).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Comparison {
    /// The feature could not be compared (its kind differs between baseline and window).
    Error {
        error: String,
    },
    Categorical(CategoricalDrift),
    Numeric(NumericDrift),
}

/// A numeric feature's statistics; `None` (null) where undefined for this window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericDrift {
    pub psi: Option<f64>,
    pub js: Option<f64>,
    #[serde(default, deserialize_with = "ks_test")]
    pub ks: Option<KsTest>,
    pub wasserstein: Option<f64>,
    pub wasserstein_norm: Option<f64>,
    pub missing_rate_baseline: Option<f64>,
    pub missing_rate_window: Option<f64>,
    pub out_of_range_rate: Option<f64>,
}

/// A categorical feature's statistics; `None` (null) where undefined for this window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoricalDrift {
    pub psi: Option<f64>,
    pub js: Option<f64>,
    #[serde(default, deserialize_with = "chi2_test")]
    pub chi2: Option<Chi2Test>,
    pub missing_rate_baseline: Option<f64>,
    pub missing_rate_window: Option<f64>,
    pub unseen_rate: Option<f64>,
    /// The unseen categories with the most rows, at most
    /// [`MAX_LISTED_CATEGORIES`](crate::category::MAX_LISTED_CATEGORIES), sorted.
    pub unseen: Vec<String>,
    /// All unseen categories. Reports of builds that listed every one have no count: read
    /// back, it is then 0, which readers take as "as many as listed".
    #[serde(default)]
    pub unseen_count: usize,
    /// The vanished categories with the most baseline rows, as many.
    pub vanished: Vec<String>,
    /// All vanished categories (0 in reports without the count, as `unseen_count`).
    #[serde(default)]
    pub vanished_count: usize,
}

/// A window compared with a baseline (see the module documentation for the JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Rows in the window (its longest column).
    pub rows: u64,
    pub features: BTreeMap<String, FeatureDrift>,
    pub outputs: BTreeMap<String, FeatureDrift>,
    /// Names of the features, then the outputs, that drifted.
    pub drifted: Vec<String>,
    /// Names (features, then outputs) in the window but not the baseline: not compared.
    pub missing_in_baseline: Vec<String>,
    /// Names (features, then outputs) in the baseline but not the window: not compared.
    pub missing_in_window: Vec<String>,
    pub thresholds: AppliedThresholds,
}

/// Which model, version and span of time a live report covers: what the server adds to a
/// report, which an offline one (a file against a file) does not have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveWindow {
    pub model: String,
    pub version: u64,
    /// The window's first and last row, RFC 3339.
    pub from: String,
    pub to: String,
}

/// A report as the server publishes it: its JSON is the report's with the window's four keys
/// beside them (`{"model": …, "version": …, "from": …, "to": …, "rows": …, "features": …}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedDrift {
    #[serde(flatten)]
    pub window: LiveWindow,
    #[serde(flatten)]
    pub report: DriftReport,
}

/// A KS result read back. The report leaves out which method gave the p-value, so what is read
/// back says asymptotic; and a statistic written as `null` (not finite) reads as NaN, so that
/// the report writes back as it was.
fn ks_test<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<KsTest>, D::Error> {
    #[derive(Deserialize)]
    struct Written {
        statistic: Option<f64>,
        pvalue: Option<f64>,
    }
    Ok(
        Option::<Written>::deserialize(deserializer)?.map(|t| KsTest {
            statistic: t.statistic.unwrap_or(f64::NAN),
            pvalue: t.pvalue.unwrap_or(f64::NAN),
            method: KsMethod::Asymptotic,
        }),
    )
}

/// A chi-squared result read back, `null` statistics as NaN (see [`ks_test`]).
fn chi2_test<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Chi2Test>, D::Error> {
    #[derive(Deserialize)]
    struct Written {
        statistic: Option<f64>,
        dof: u64,
        pvalue: Option<f64>,
    }
    Ok(
        Option::<Written>::deserialize(deserializer)?.map(|t| Chi2Test {
            statistic: t.statistic.unwrap_or(f64::NAN),
            dof: t.dof,
            pvalue: t.pvalue.unwrap_or(f64::NAN),
        }),
    )
}

/// Compares a window with a baseline. Never panics: a feature that cannot be compared is listed
/// or reported as an error entry. A window name given twice keeps its last column.
pub fn drift(
    baseline: &Baseline,
    features: &Columns,
    outputs: &Columns,
    thresholds: &Thresholds,
) -> DriftReport {
    let rows = features
        .iter()
        .chain(outputs.iter())
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(0);
    let feature_pairs = pair_up(&baseline.features, features);
    let output_pairs = pair_up(&baseline.outputs, outputs);
    let comparisons = feature_pairs.compared + output_pairs.compared;
    let alpha_corrected = if comparisons > 0 {
        thresholds.alpha / comparisons as f64
    } else {
        thresholds.alpha
    };
    let limits = Limits {
        thresholds,
        alpha_corrected,
    };
    let compare_all = |pairs: &Pairs| -> BTreeMap<String, FeatureDrift> {
        pairs
            .both
            .iter()
            .map(|(name, (b, w))| (name.to_string(), compare(b, w, rows, &limits)))
            .collect()
    };
    let features = compare_all(&feature_pairs);
    let outputs = compare_all(&output_pairs);
    let drifted = features
        .iter()
        .chain(outputs.iter())
        .filter(|(_, d)| d.drifted)
        .map(|(name, _)| name.clone())
        .collect();
    let concat = |a: &[&str], b: &[&str]| a.iter().chain(b).map(|s| s.to_string()).collect();
    DriftReport {
        rows: rows as u64,
        drifted,
        missing_in_baseline: concat(&feature_pairs.window_only, &output_pairs.window_only),
        missing_in_window: concat(&feature_pairs.baseline_only, &output_pairs.baseline_only),
        features,
        outputs,
        thresholds: AppliedThresholds {
            thresholds: *thresholds,
            comparisons,
            alpha_corrected,
        },
    }
}

/// The baseline's and the window's columns of one section, matched by name.
struct Pairs<'a> {
    both: BTreeMap<&'a str, (&'a FeatureBaseline, &'a Column)>,
    /// Pairs of the same kind: the `m` of the Bonferroni correction.
    compared: usize,
    baseline_only: Vec<&'a str>,
    window_only: Vec<&'a str>,
}

fn pair_up<'a>(baseline: &'a BTreeMap<String, FeatureBaseline>, window: &'a Columns) -> Pairs<'a> {
    let window: BTreeMap<&str, &Column> = window.iter().map(|(n, c)| (n.as_str(), c)).collect();
    let mut both = BTreeMap::new();
    let mut window_only = Vec::new();
    for (&name, &column) in &window {
        match baseline.get(name) {
            Some(b) => {
                both.insert(name, (b, column));
            }
            None => window_only.push(name),
        }
    }
    let in_window: BTreeSet<&str> = window.keys().copied().collect();
    let baseline_only = baseline
        .keys()
        .map(String::as_str)
        .filter(|n| !in_window.contains(n))
        .collect();
    let compared = both.values().filter(|(b, w)| b.kind() == w.kind()).count();
    Pairs {
        both,
        compared,
        baseline_only,
        window_only,
    }
}

/// The thresholds with the corrected significance.
struct Limits<'a> {
    thresholds: &'a Thresholds,
    alpha_corrected: f64,
}

impl Limits<'_> {
    /// Whether a statistic exceeds its threshold; never when either is unset or NaN.
    fn above(value: Option<f64>, threshold: Option<f64>) -> bool {
        matches!((value, threshold), (Some(v), Some(t)) if v > t)
    }

    /// Whether a test's p-value is below the corrected significance.
    fn significant(&self, pvalue: Option<f64>) -> bool {
        pvalue.is_some_and(|p| p < self.alpha_corrected)
    }

    /// Whether the missing rate rose by more than its threshold.
    fn missing_increase(&self, baseline: Option<f64>, window: Option<f64>) -> bool {
        let increase = baseline.zip(window).map(|(b, w)| w - b);
        Self::above(increase, self.thresholds.missing_rate_increase)
    }
}

fn compare(
    baseline: &FeatureBaseline,
    column: &Column,
    rows: usize,
    limits: &Limits,
) -> FeatureDrift {
    let (comparison, violations, histogram) = match (baseline, column) {
        (FeatureBaseline::Numeric(b), Column::Numeric(values)) => {
            let (drift, histogram) = compare_numeric(b, values, rows);
            let violations = numeric_violations(&drift, limits);
            (Comparison::Numeric(drift), violations, Some(histogram))
        }
        (FeatureBaseline::Categorical(b), Column::Categorical(values)) => {
            let (drift, histogram) = compare_categorical(b, values, rows);
            let violations = categorical_violations(&drift, limits);
            (Comparison::Categorical(drift), violations, Some(histogram))
        }
        (b, w) => {
            let error = format!(
                "the baseline's feature is {}, the window's is {}",
                kind_name(b.kind()),
                kind_name(w.kind())
            );
            (Comparison::Error { error }, Vec::new(), None)
        }
    };
    FeatureDrift {
        kind: baseline.kind(),
        comparison,
        drifted: !violations.is_empty(),
        violations,
        histogram,
    }
}

/// A kind as the report's JSON names it.
pub(crate) fn kind_name(kind: FeatureKind) -> &'static str {
    match kind {
        FeatureKind::Numeric => "numeric",
        FeatureKind::Categorical => "categorical",
    }
}

/// A baseline's missing values over its rows; `None` when it had none.
fn missing_rate(count: u64, missing: u64) -> Option<f64> {
    let rows = count.saturating_add(missing);
    (rows > 0).then(|| missing as f64 / rows as f64)
}

/// Missing values (counting a short column's tail) over the window's rows.
fn window_missing_rate(valid: usize, rows: usize) -> Option<f64> {
    (rows > 0).then(|| rows.saturating_sub(valid) as f64 / rows as f64)
}

fn compare_numeric(
    baseline: &NumericBaseline,
    values: &[f64],
    rows: usize,
) -> (NumericDrift, Histogram) {
    let window = SortedValues::from_vec(values.iter().copied().filter(|v| v.is_finite()).collect());
    let window_proportions = stats::bin_proportions(&baseline.edges, &window);
    let proportions = |f: fn(&[f64], &[f64]) -> Option<f64>| {
        window_proportions
            .as_deref()
            .and_then(|w| f(&baseline.proportions, w))
    };
    let sample = SortedValues::new(&baseline.sample);
    let wasserstein = stats::wasserstein(&sample, &window);
    let out_of_range_rate = baseline
        .min
        .zip(baseline.max)
        .and_then(|(min, max)| stats::out_of_range_rate(&window, min, max));
    let drift = NumericDrift {
        psi: proportions(stats::psi),
        js: proportions(stats::js_distance),
        ks: stats::ks_2samp(&sample, &window),
        wasserstein,
        wasserstein_norm: stats::wasserstein_normalized(wasserstein, baseline.std),
        missing_rate_baseline: missing_rate(baseline.count, baseline.missing),
        missing_rate_window: window_missing_rate(window.len(), rows),
        out_of_range_rate,
    };
    // A baseline without values has no bins: there is nothing to draw either side against.
    let binned =
        !baseline.proportions.is_empty() && baseline.proportions.len() == baseline.edges.len() + 1;
    let histogram = Histogram::Numeric {
        edges: baseline.edges.clone(),
        baseline: binned.then(|| baseline.proportions.clone()),
        window: window_proportions.filter(|_| binned),
    };
    (drift, histogram)
}

fn compare_categorical(
    baseline: &CategoricalBaseline,
    values: &[Option<String>],
    rows: usize,
) -> (CategoricalDrift, Histogram) {
    let window = stats::category_counts_keeping(values, &baseline.frequencies);
    let proportions = stats::category_proportions(&baseline.frequencies, &window.counts);
    let unseen = stats::unseen(&baseline.frequencies, &window.counts);
    let drift = CategoricalDrift {
        psi: proportions.as_ref().and_then(|(b, w)| stats::psi(b, w)),
        js: proportions
            .as_ref()
            .and_then(|(b, w)| stats::js_distance(b, w)),
        chi2: stats::chi2_contingency(&baseline.frequencies, &window.counts),
        missing_rate_baseline: missing_rate(baseline.count, baseline.missing),
        missing_rate_window: window_missing_rate(window.valid() as usize, rows),
        unseen_rate: unseen.rate,
        unseen: unseen.unseen,
        unseen_count: unseen.unseen_count,
        vanished: unseen.vanished,
        vanished_count: unseen.vanished_count,
    };
    let histogram = category_histogram(&baseline.frequencies, &window.counts, proportions);
    (drift, histogram)
}

/// The categorical histogram over the sorted union of categories with a count, the order
/// [`stats::category_proportions`] uses. When both sides have values its proportions are the
/// ones PSI compared; otherwise the side with values gets its own (`count / total`).
fn category_histogram(
    baseline: &BTreeMap<String, u64>,
    window: &BTreeMap<String, u64>,
    compared: Option<(Vec<f64>, Vec<f64>)>,
) -> Histogram {
    let union: BTreeSet<&String> = baseline
        .iter()
        .chain(window.iter())
        .filter(|(_, &count)| count > 0)
        .map(|(category, _)| category)
        .collect();
    let categories: Vec<&String> = union.into_iter().collect();
    let (b, w) = match compared {
        Some((b, w)) => (Some(b), Some(w)),
        None => (
            own_proportions(baseline, &categories),
            own_proportions(window, &categories),
        ),
    };
    if categories.len() <= MAX_HISTOGRAM_CATEGORIES {
        return Histogram::Categorical {
            categories: categories.into_iter().cloned().collect(),
            baseline: b,
            window: w,
            rest: None,
        };
    }
    // Keep the categories that weigh most on either side; ties go to the earlier name.
    let at = |side: &Option<Vec<f64>>, i: usize| {
        side.as_ref().and_then(|p| p.get(i).copied()).unwrap_or(0.0)
    };
    let mut order: Vec<usize> = (0..categories.len()).collect();
    order.sort_by(|&i, &j| {
        let weight = |k| at(&b, k).max(at(&w, k));
        weight(j).total_cmp(&weight(i)).then(i.cmp(&j))
    });
    let mut kept: Vec<usize> = order[..MAX_HISTOGRAM_CATEGORIES].to_vec();
    kept.sort_unstable();
    let left_out = &order[MAX_HISTOGRAM_CATEGORIES..];
    let pick = |side: &Option<Vec<f64>>| {
        side.as_ref()
            .map(|_| kept.iter().map(|&i| at(side, i)).collect())
    };
    let rest_of = |side: &Option<Vec<f64>>| {
        side.as_ref().map(|_| {
            stats::sum::pairwise_sum(&left_out.iter().map(|&i| at(side, i)).collect::<Vec<_>>())
        })
    };
    Histogram::Categorical {
        categories: kept.iter().map(|&i| categories[i].clone()).collect(),
        baseline: pick(&b),
        window: pick(&w),
        rest: Some(RestOfCategories {
            categories: left_out.len(),
            baseline: rest_of(&b),
            window: rest_of(&w),
        }),
    }
}

/// One side's proportions over `categories`; `None` when it has no values.
fn own_proportions(counts: &BTreeMap<String, u64>, categories: &[&String]) -> Option<Vec<f64>> {
    let counts: Vec<f64> = categories
        .iter()
        .map(|c| counts.get(*c).copied().unwrap_or(0) as f64)
        .collect();
    let total = stats::sum::pairwise_sum(&counts);
    (total > 0.0).then(|| counts.iter().map(|&c| c / total).collect())
}

fn numeric_violations(d: &NumericDrift, limits: &Limits) -> Vec<Statistic> {
    let t = limits.thresholds;
    let checks = [
        (Statistic::Psi, Limits::above(d.psi, t.psi)),
        (Statistic::Js, Limits::above(d.js, t.js)),
        (Statistic::Ks, limits.significant(d.ks.map(|k| k.pvalue))),
        (
            Statistic::WassersteinNorm,
            Limits::above(d.wasserstein_norm, t.wasserstein_norm),
        ),
        (
            Statistic::OutOfRangeRate,
            Limits::above(d.out_of_range_rate, t.out_of_range_rate),
        ),
        (
            Statistic::MissingRateIncrease,
            limits.missing_increase(d.missing_rate_baseline, d.missing_rate_window),
        ),
    ];
    violated(checks)
}

fn categorical_violations(d: &CategoricalDrift, limits: &Limits) -> Vec<Statistic> {
    let t = limits.thresholds;
    let checks = [
        (Statistic::Psi, Limits::above(d.psi, t.psi)),
        (Statistic::Js, Limits::above(d.js, t.js)),
        (
            Statistic::Chi2,
            limits.significant(d.chi2.map(|c| c.pvalue)),
        ),
        (
            Statistic::UnseenRate,
            Limits::above(d.unseen_rate, t.unseen_rate),
        ),
        (
            Statistic::MissingRateIncrease,
            limits.missing_increase(d.missing_rate_baseline, d.missing_rate_window),
        ),
    ];
    violated(checks)
}

fn violated<const N: usize>(checks: [(Statistic, bool); N]) -> Vec<Statistic> {
    checks
        .into_iter()
        .filter(|&(_, hit)| hit)
        .map(|(s, _)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_default_and_switch_off() {
        let t: Thresholds = serde_json::from_str("{}").unwrap();
        assert_eq!(t, Thresholds::default());
        let t: Thresholds = serde_json::from_str(r#"{"psi": false, "js": 0.1}"#).unwrap();
        assert_eq!((t.psi, t.js), (None, Some(0.1)));
        let t: Thresholds = serde_json::from_str(r#"{"psi": null, "alpha": 0.05}"#).unwrap();
        assert_eq!((t.psi, t.alpha), (None, 0.05));
        assert!(serde_json::from_str::<Thresholds>(r#"{"psi": true}"#).is_err());
        assert!(serde_json::from_str::<Thresholds>(r#"{"psy": 0.1}"#).is_err());
    }

    #[test]
    fn thresholds_validate() {
        assert_eq!(Thresholds::default().validate(), Ok(()));
        let bad = Thresholds {
            alpha: 0.0,
            ..Thresholds::default()
        };
        assert_eq!(bad.validate(), Err(ThresholdError::Alpha(0.0)));
        let bad = Thresholds {
            js: Some(-1.0),
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }

    /// A window of each kind against its baseline, with a kind that differs and names on one
    /// side only.
    fn sample_report() -> DriftReport {
        let numeric = |shift: f64, n: usize| {
            Column::Numeric((0..n).map(|i| (i % 97) as f64 + shift).collect())
        };
        let categorical = |names: &[&str], n: usize| {
            Column::Categorical(
                (0..n)
                    .map(|i| Some(names[i % names.len()].to_string()))
                    .collect(),
            )
        };
        let baseline_features: Columns = vec![
            ("x".into(), numeric(0.0, 500)),
            ("colour".into(), categorical(&["red", "green"], 500)),
            ("flip".into(), numeric(0.0, 500)),
            ("gone".into(), numeric(0.0, 500)),
        ];
        let window_features: Columns = vec![
            ("x".into(), numeric(30.0, 200)),
            ("colour".into(), categorical(&["red", "blue"], 200)),
            ("flip".into(), categorical(&["a"], 200)),
            ("new".into(), numeric(0.0, 200)),
        ];
        let baseline_outputs: Columns = vec![("label".into(), categorical(&["0", "1"], 500))];
        let window_outputs: Columns = vec![("label".into(), categorical(&["0", "1"], 200))];
        let baseline = Baseline::from_columns(
            &baseline_features,
            &baseline_outputs,
            &crate::baseline::BaselineOptions::default(),
        );
        drift(
            &baseline,
            &window_features,
            &window_outputs,
            &Thresholds::default(),
        )
    }

    #[test]
    fn a_report_reads_back_as_written() {
        let report = sample_report();
        assert!(matches!(
            report.features["flip"].comparison,
            Comparison::Error { .. }
        ));
        let json = serde_json::to_value(&report).unwrap();
        let back: DriftReport = serde_json::from_value(json.clone()).unwrap();
        assert!(matches!(
            back.features["x"].comparison,
            Comparison::Numeric(_)
        ));
        assert!(matches!(
            back.features["colour"].comparison,
            Comparison::Categorical(_)
        ));
        assert!(matches!(
            back.features["flip"].comparison,
            Comparison::Error { .. }
        ));
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.features["colour"], report.features["colour"]);
    }

    #[test]
    fn a_published_report_has_the_window_beside_the_report() {
        let published = PublishedDrift {
            window: LiveWindow {
                model: "iris".into(),
                version: 3,
                from: "2026-12-01T10:00:00.000000Z".into(),
                to: "2026-12-01T10:05:00.000000Z".into(),
            },
            report: sample_report(),
        };
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(json["model"], "iris");
        assert_eq!(json["version"], 3);
        assert_eq!(json["to"], "2026-12-01T10:05:00.000000Z");
        assert_eq!(json["rows"], 200);
        assert_eq!(json["features"]["x"]["kind"], "numeric");
        let mut plain = serde_json::to_value(&published.report).unwrap();
        for key in ["model", "version", "from", "to"] {
            plain[key] = json[key].clone();
        }
        assert_eq!(plain, json, "the report's keys, and the window's four");
        let back: PublishedDrift = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(back.window, published.window);
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }

    #[test]
    fn reports_of_older_builds_still_read() {
        // Before histograms and the unseen and vanished counts.
        let mut json = serde_json::to_value(sample_report()).unwrap();
        for group in ["features", "outputs"] {
            for (_, feature) in json[group].as_object_mut().unwrap() {
                let feature = feature.as_object_mut().unwrap();
                for key in ["histogram", "unseen_count", "vanished_count"] {
                    feature.remove(key);
                }
            }
        }
        let back: DriftReport = serde_json::from_value(json).unwrap();
        let colour = &back.features["colour"];
        assert_eq!(colour.histogram, None);
        let Comparison::Categorical(c) = &colour.comparison else {
            panic!("colour is categorical: {colour:?}");
        };
        assert_eq!((c.unseen.len(), c.unseen_count), (1, 0));
    }

    #[test]
    fn statistics_are_named_as_written() {
        use Statistic::*;
        for s in [
            Psi,
            Js,
            Ks,
            Chi2,
            WassersteinNorm,
            OutOfRangeRate,
            UnseenRate,
            MissingRateIncrease,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }

    #[test]
    fn statistics_written_as_null_read_back_as_null() {
        let mut json = serde_json::to_value(sample_report()).unwrap();
        json["features"]["x"]["ks"]["pvalue"] = serde_json::Value::Null;
        json["features"]["colour"]["chi2"]["statistic"] = serde_json::Value::Null;
        let back: DriftReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }
}
