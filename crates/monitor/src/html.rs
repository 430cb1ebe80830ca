//! The drift report as one self-contained HTML page: inline CSS and inline SVG, no script, no
//! font, stylesheet or image fetched from anywhere.
//!
//! Why so strict: the page is read on machines that may be offline (an air-gapped cluster, a
//! laptop on a plane with a report file), in browsers that may run no JavaScript (locked-down
//! consoles, mail clients, archived copies). Everything is drawn at render time, here, and what
//! a chart shows is also in a table, so nothing depends on colour, hover or script.
//!
//! [`drift_page`] takes the report as [`crate::report`] types it, so that a field renamed there
//! is a compile error here rather than a blank page. A number that is not finite is shown as the
//! report's JSON has it, null: undefined (or, for a histogram bar, zero). Every string from the
//! report (feature and category names come from users) is escaped; numbers are formatted here.
//!
//! [`page`] and [`escape`] are the skeleton and the escaping the server's other pages share.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::quality::{ClassificationScores, QualityWindow, RegressionScores, Scored};
use crate::report::{
    kind_name, AppliedThresholds, CategoricalDrift, Comparison, DriftReport, FeatureDrift,
    Histogram, LiveWindow, NumericDrift, PublishedDrift, Statistic,
};

/// Appends formatted text to a `String` (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// The most features and outputs drawn one by one; a page of thousands of charts helps nobody
/// and costs the server its size. The rest are listed by name.
pub const MAX_FEATURES_DRAWN: usize = 500;

/// The most names shown in a list (unseen categories, not compared features) before "and N more".
const MAX_LIST: usize = 20;

/// Characters of a category kept under a bar; the full name is in the bar's tooltip and table.
const MAX_LABEL_CHARS: usize = 14;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than whitespace have no business in a page.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The shared style: system fonts only, so nothing is fetched.
const STYLE: &str = "\
:root{color-scheme:light}\
*{box-sizing:border-box}\
body{margin:0;background:#f4f5f7;color:#1d2433;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}\
header{background:#1d2433;color:#fff;padding:14px 24px}\
header h1{margin:0;font-size:20px;overflow-wrap:anywhere}\
header p{margin:4px 0 0;color:#c9d1dd}\
header a{color:#fff}\
main{padding:16px 24px;max-width:1280px}\
section,article{background:#fff;border:1px solid #d5dae1;border-radius:6px;padding:12px 16px;margin:0 0 16px}\
article.drifted{border-left:6px solid #c62828}\
h2{font-size:17px;margin:0 0 10px}\
h3{font-size:15px;margin:0 0 8px;overflow-wrap:anywhere}\
table{border-collapse:collapse;margin:4px 0}\
th,td{padding:3px 10px 3px 6px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}\
th{background:#eef1f4;font-weight:600}\
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
tr.violated td{background:#fde0de}\
tr.violated td.status{color:#9b1c1c;font-weight:700}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:700;vertical-align:middle}\
.badge.bad{background:#c62828;color:#fff}\
.badge.good{background:#2e7d32;color:#fff}\
.badge.info{background:#607d8b;color:#fff}\
.banner{padding:8px 12px;border-radius:4px;font-weight:700;margin:0 0 10px}\
.banner.bad{background:#fde0de;color:#8e1b1b;border:1px solid #e6a19b}\
.banner.good{background:#e2f3e4;color:#1e5b22;border:1px solid #9fceA4}\
.banner.info{background:#eceff1;color:#37474f;border:1px solid #cfd8dc}\
.grid{display:flex;flex-wrap:wrap;gap:12px 24px;align-items:flex-start}\
.legend{margin:0 0 4px;font-size:12px}\
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #333;vertical-align:-2px;margin:0 4px 0 10px}\
.muted{color:#5f6b7a}\
.name{overflow-wrap:anywhere}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0 0 8px}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}\
details{margin:6px 0 0}summary{cursor:pointer;color:#37474f}\
svg{display:block;max-width:100%;height:auto}\
svg text{font:11px system-ui,'DejaVu Sans',sans-serif;fill:#1d2433}\
a{color:#1a56a8}\
";

/// A whole page: doctype, head with the shared style, and `body` (already HTML) under a header
/// of `title` and `subtitle` (text, escaped here).
pub fn page(title: &str, subtitle: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 512);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\n<body><header><h1>{title}</h1>",
        title = escape(title)
    );
    if !subtitle.is_empty() {
        w!(out, "<p>{}</p>", escape(subtitle));
    }
    out.push_str("</header>\n<main>\n");
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// A report as the page shows it: the comparison, and for a live report which model, version
/// and span of time it covers (an offline report, a file against a file, has none).
#[derive(Clone, Copy, Debug)]
pub struct ReportView<'a> {
    pub report: &'a DriftReport,
    pub window: Option<&'a LiveWindow>,
}

impl<'a> From<&'a PublishedDrift> for ReportView<'a> {
    fn from(published: &'a PublishedDrift) -> Self {
        ReportView {
            report: &published.report,
            window: Some(&published.window),
        }
    }
}

impl<'a> From<&'a DriftReport> for ReportView<'a> {
    fn from(report: &'a DriftReport) -> Self {
        ReportView {
            report,
            window: None,
        }
    }
}

/// The drift report page: a summary, live quality over time, then per feature and output the
/// baseline-against-window histogram and the statistics with their thresholds. `report` is
/// `None` before a window has closed; `quality` is the quality windows, oldest first (the one
/// still filling, if shown, has `filling` set).
pub fn drift_page(
    title: &str,
    report: Option<ReportView<'_>>,
    quality: &[QualityWindow],
) -> String {
    let subtitle = report
        .and_then(|r| r.window)
        .map(window_line)
        .unwrap_or_default();
    page(title, &subtitle, &drift_body(report, quality))
}

/// The page's content without the skeleton, for pages that add their own navigation.
pub fn drift_body(report: Option<ReportView<'_>>, quality: &[QualityWindow]) -> String {
    let mut out = String::new();
    match report {
        Some(view) => {
            summary(&mut out, view);
            quality_section(&mut out, quality);
            let report = view.report;
            let mut drawn = 0usize;
            for (features, prefix, heading) in [
                (&report.features, "feature", "Features"),
                (&report.outputs, "output", "Outputs"),
            ] {
                features_section(
                    &mut out,
                    features,
                    &report.thresholds,
                    prefix,
                    heading,
                    &mut drawn,
                );
            }
        }
        None => {
            out.push_str(
                "<section><div class=\"banner info\">No drift window has closed yet.</div>\
                 <p>A report appears here when the first window of logged rows closes \
                 (after <code>window_rows</code> rows or <code>window_seconds</code> seconds) \
                 and the version has a baseline.</p></section>\n",
            );
            quality_section(&mut out, quality);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Non-finite numbers: the report's JSON writes them as null, and the page shows what it says.

/// `x` if finite.
fn finite(x: f64) -> Option<f64> {
    Some(x).filter(|x| x.is_finite())
}

/// `x` if set and finite.
fn defined(x: Option<f64>) -> Option<f64> {
    x.filter(|x| x.is_finite())
}

/// Proportions or edges to draw: a value that is not finite (null in the JSON) counts as 0.
fn drawable(values: &[f64]) -> Vec<f64> {
    values
        .iter()
        .map(|&x| if x.is_finite() { x } else { 0.0 })
        .collect()
}

/// "model m · version v · window from … to …" (a page's subtitle; escaped by [`page`]).
pub fn window_line(window: &LiveWindow) -> String {
    format!(
        "model {} · version {} · window {} to {}",
        window.model, window.version, window.from, window.to
    )
}

// ---------------------------------------------------------------------------------------------
// Number formatting.

/// Four significant digits, exponent notation for very small or large magnitudes.
fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "∞".into()
        } else {
            "−∞".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{x:.3e}");
        return match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{exp}", trim_zeros(mantissa)),
            None => s,
        };
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim_zeros(&format!("{x:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        let pct = x * 100.0;
        if pct != 0.0 && pct.abs() < 0.01 {
            format!("{}%", fmt_num(pct))
        } else {
            format!("{pct:.2}%")
        }
    } else {
        fmt_num(x)
    }
}

fn opt(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map_or_else(|| "undefined".to_string(), f)
}

// ---------------------------------------------------------------------------------------------
// Summary.

fn summary(out: &mut String, view: ReportView<'_>) {
    let report = view.report;
    let drifted = &report.drifted;
    let compared = report.thresholds.comparisons;
    out.push_str("<section id=\"summary\"><h2>Summary</h2>\n");
    if drifted.is_empty() {
        w!(
            out,
            "<div class=\"banner good\">✓ NO DRIFT: no feature or output is over a threshold \
             ({compared} compared).</div>"
        );
    } else {
        w!(
            out,
            "<div class=\"banner bad\">⚠ DRIFT: {} of the {compared} features and outputs \
             compared over a threshold.</div>",
            drifted.len()
        );
    }
    out.push_str("<dl>");
    if let Some(window) = view.window {
        w!(out, "<dt>Model</dt><dd>{}</dd>", escape(&window.model));
        w!(out, "<dt>Version</dt><dd>{}</dd>", window.version);
    }
    w!(out, "<dt>Rows in window</dt><dd>{}</dd>", report.rows);
    let (from, to) = view
        .window
        .map_or(("unknown", "unknown"), |w| (w.from.as_str(), w.to.as_str()));
    w!(
        out,
        "<dt>Window</dt><dd>{} to {}</dd>",
        escape(from),
        escape(to)
    );
    out.push_str("<dt>Drifted</dt><dd>");
    if drifted.is_empty() {
        out.push_str("none");
    } else {
        let links: Vec<String> = drifted
            .iter()
            .map(|name| match anchor_of(report, name) {
                Some(id) => format!("<a href=\"#{id}\">{}</a>", escape(name)),
                None => escape(name),
            })
            .collect();
        list_into(out, &links);
    }
    out.push_str("</dd>");
    for (names, label) in [
        (
            &report.missing_in_baseline,
            "In the window only (not compared)",
        ),
        (
            &report.missing_in_window,
            "In the baseline only (not compared)",
        ),
    ] {
        if !names.is_empty() {
            let names: Vec<String> = names.iter().map(|n| escape(n)).collect();
            w!(out, "<dt>{label}</dt><dd>");
            list_into(out, &names);
            out.push_str("</dd>");
        }
    }
    out.push_str("</dl>\n");
    thresholds_table(out, &report.thresholds);
    out.push_str("</section>\n");
}

/// A comma-separated list of (already escaped) items, the first [`MAX_LIST`] of them.
fn list_into(out: &mut String, items: &[String]) {
    list_of_into(out, items, items.len());
}

/// The first [`MAX_LIST`] of `items`, and how many more of `total` there are.
fn list_of_into(out: &mut String, items: &[String], total: usize) {
    let shown = items.len().min(MAX_LIST);
    out.push_str(&items[..shown].join(", "));
    if total > shown {
        w!(out, " and {} more", total - shown);
    }
}

/// The id of a feature's section, by its position (names may hold anything).
fn anchor_of(report: &DriftReport, name: &str) -> Option<String> {
    for (map, prefix) in [(&report.features, "feature"), (&report.outputs, "output")] {
        if let Some(i) = map.keys().position(|k| k == name) {
            return (i < MAX_FEATURES_DRAWN).then(|| format!("{prefix}-{i}"));
        }
    }
    None
}

fn thresholds_table(out: &mut String, applied: &AppliedThresholds) {
    let t = &applied.thresholds;
    out.push_str(
        "<details><summary>Thresholds applied</summary><table><tr><th>Statistic</th>\
         <th>Violated when</th></tr>",
    );
    let rows: [(&str, String); 7] = [
        ("PSI", gt(t.psi, fmt_num)),
        (
            "KS, chi-squared",
            match (finite(t.alpha), finite(applied.alpha_corrected)) {
                (Some(a), Some(c)) => format!(
                    "p-value &lt; {} (alpha {} over {} comparisons, Bonferroni)",
                    fmt_num(c),
                    fmt_num(a),
                    fmt_num(applied.comparisons as f64)
                ),
                _ => "unknown".into(),
            },
        ),
        ("Jensen–Shannon", gt(t.js, fmt_num)),
        (
            "Wasserstein / baseline std",
            gt(t.wasserstein_norm, fmt_num),
        ),
        ("Out-of-range rate", gt(t.out_of_range_rate, fmt_pct)),
        ("Unseen rate", gt(t.unseen_rate, fmt_pct)),
        (
            "Missing-rate increase",
            gt(t.missing_rate_increase, fmt_pct),
        ),
    ];
    for (name, rule) in rows {
        w!(out, "<tr><td>{name}</td><td>{rule}</td></tr>");
    }
    out.push_str("</table></details>\n");
}

/// A threshold's rule; "off" when it is unset (or not finite, which the JSON has as null).
fn gt(threshold: Option<f64>, f: fn(f64) -> String) -> String {
    defined(threshold).map_or_else(|| "off".to_string(), |t| format!("&gt; {}", f(t)))
}

// ---------------------------------------------------------------------------------------------
// Features.

fn features_section(
    out: &mut String,
    features: &BTreeMap<String, FeatureDrift>,
    thresholds: &AppliedThresholds,
    prefix: &str,
    heading: &str,
    drawn: &mut usize,
) {
    if features.is_empty() {
        return;
    }
    w!(out, "<h2>{heading} ({})</h2>\n", features.len());
    let mut skipped = Vec::new();
    for (i, (name, feature)) in features.iter().enumerate() {
        if i >= MAX_FEATURES_DRAWN || *drawn >= MAX_FEATURES_DRAWN {
            skipped.push(escape(name));
            continue;
        }
        *drawn += 1;
        feature_article(out, &format!("{prefix}-{i}"), name, feature, thresholds);
    }
    if !skipped.is_empty() {
        w!(
            out,
            "<section><p>{} more not drawn (at most {MAX_FEATURES_DRAWN} per page): ",
            skipped.len()
        );
        list_into(out, &skipped);
        out.push_str("</p></section>\n");
    }
}

fn feature_article(
    out: &mut String,
    id: &str,
    name: &str,
    f: &FeatureDrift,
    thresholds: &AppliedThresholds,
) {
    w!(
        out,
        "<article id=\"{id}\"{}><h3><span class=\"name\">{}</span> <span class=\"muted\">({})</span> ",
        if f.drifted { " class=\"drifted\"" } else { "" },
        escape(name),
        escape(kind_name(f.kind))
    );
    let measured = match &f.comparison {
        Comparison::Error { error } => {
            w!(
                out,
                "<span class=\"badge info\">NOT COMPARED</span></h3><p>{}</p></article>\n",
                escape(error)
            );
            return;
        }
        Comparison::Numeric(d) => Measured::Numeric(d),
        Comparison::Categorical(d) => Measured::Categorical(d),
    };
    if f.drifted {
        out.push_str("<span class=\"badge bad\">DRIFTED</span>");
    } else {
        out.push_str("<span class=\"badge good\">OK</span>");
    }
    out.push_str("</h3><div class=\"grid\"><div>");
    histogram(out, name, f.histogram.as_ref());
    out.push_str("</div><div>");
    stats_table(out, measured, thresholds, &f.violations);
    out.push_str("</div></div></article>\n");
}

/// A compared feature's statistics, by kind.
#[derive(Clone, Copy)]
enum Measured<'a> {
    Numeric(&'a NumericDrift),
    Categorical(&'a CategoricalDrift),
}

/// One row of a statistics table.
struct StatRow {
    name: &'static str,
    value: String,
    threshold: String,
    status: Status,
}

enum Status {
    Violated,
    Ok,
    /// No threshold applies (descriptive, or switched off).
    NotChecked,
    /// The statistic is undefined for this window.
    Undefined,
}

impl StatRow {
    /// A row; `statistic` is what the report names among the violations when this row's
    /// threshold was exceeded (`None` for a row that has no threshold).
    fn new(
        name: &'static str,
        value: Option<f64>,
        shown: String,
        threshold: Option<String>,
        statistic: Option<Statistic>,
        violations: &[Statistic],
    ) -> StatRow {
        let status = if statistic.is_some_and(|s| violations.contains(&s)) {
            Status::Violated
        } else if value.is_none() {
            Status::Undefined
        } else if threshold.is_some() {
            Status::Ok
        } else {
            Status::NotChecked
        };
        StatRow {
            name,
            value: shown,
            threshold: threshold.unwrap_or_else(|| "off".into()),
            status,
        }
    }
}

fn stats_table(
    out: &mut String,
    measured: Measured<'_>,
    t: &AppliedThresholds,
    violations: &[Statistic],
) {
    let rows = stat_rows(measured, t, violations);
    out.push_str(
        "<table><tr><th>Statistic</th><th>Value</th><th>Threshold</th><th>Status</th></tr>",
    );
    for row in rows {
        let (class, status) = match row.status {
            Status::Violated => (" class=\"violated\"", "✗ VIOLATED"),
            Status::Ok => ("", "✓ ok"),
            Status::NotChecked => ("", "not checked"),
            Status::Undefined => ("", "undefined"),
        };
        // `value` and `threshold` are built here from numbers and fixed text.
        w!(
            out,
            "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"status\">{status}</td></tr>",
            row.name,
            row.value,
            row.threshold
        );
    }
    out.push_str("</table>");
    if let Measured::Categorical(d) = measured {
        category_lists(out, d);
    }
}

/// Where the rows of one feature's statistics table read their violations from.
struct StatSource<'a> {
    violations: &'a [Statistic],
}

impl StatSource<'_> {
    /// The row of a statistic the report holds as one number.
    fn row(
        &self,
        name: &'static str,
        value: Option<f64>,
        show: fn(f64) -> String,
        threshold: Option<String>,
        statistic: Option<Statistic>,
    ) -> StatRow {
        let value = defined(value);
        StatRow::new(
            name,
            value,
            opt(value, show),
            threshold,
            statistic,
            self.violations,
        )
    }
}

/// A threshold as its row shows it.
fn above(threshold: Option<f64>, pct: bool) -> Option<String> {
    defined(threshold).map(|x| format!("&gt; {}", if pct { fmt_pct(x) } else { fmt_num(x) }))
}

/// The statistics of a feature in table order: the distances, the kind's own test and rates,
/// then the missing rate.
fn stat_rows(
    measured: Measured<'_>,
    t: &AppliedThresholds,
    violations: &[Statistic],
) -> Vec<StatRow> {
    let src = StatSource { violations };
    let th = &t.thresholds;
    let p_rule = finite(t.alpha_corrected).map(|a| format!("p &lt; {}", fmt_num(a)));
    let (psi, js, missing_baseline, missing_window) = match measured {
        Measured::Numeric(d) => (d.psi, d.js, d.missing_rate_baseline, d.missing_rate_window),
        Measured::Categorical(d) => (d.psi, d.js, d.missing_rate_baseline, d.missing_rate_window),
    };
    let mut rows = vec![
        src.row(
            "PSI",
            psi,
            fmt_num,
            above(th.psi, false),
            Some(Statistic::Psi),
        ),
        src.row(
            "Jensen–Shannon distance",
            js,
            fmt_num,
            above(th.js, false),
            Some(Statistic::Js),
        ),
    ];
    match measured {
        Measured::Categorical(d) => {
            let p = d.chi2.and_then(|c| finite(c.pvalue));
            let shown = d
                .chi2
                .and_then(|c| {
                    Some(format!(
                        "χ² {} (dof {}), p {}",
                        fmt_num(finite(c.statistic)?),
                        fmt_num(c.dof as f64),
                        fmt_num(finite(c.pvalue)?)
                    ))
                })
                .unwrap_or_else(|| "undefined".into());
            rows.push(StatRow::new(
                "Chi-squared test",
                p,
                shown,
                p_rule,
                Some(Statistic::Chi2),
                violations,
            ));
            rows.push(src.row(
                "Unseen rate",
                d.unseen_rate,
                fmt_pct,
                above(th.unseen_rate, true),
                Some(Statistic::UnseenRate),
            ));
        }
        Measured::Numeric(d) => {
            let p = d.ks.and_then(|k| finite(k.pvalue));
            let shown =
                d.ks.and_then(|k| {
                    let (d, p) = (finite(k.statistic)?, finite(k.pvalue)?);
                    Some(format!("D {}, p {}", fmt_num(d), fmt_num(p)))
                })
                .unwrap_or_else(|| "undefined".into());
            rows.push(StatRow::new(
                "Kolmogorov–Smirnov test",
                p,
                shown,
                p_rule,
                Some(Statistic::Ks),
                violations,
            ));
            rows.push(src.row("Wasserstein distance", d.wasserstein, fmt_num, None, None));
            rows.push(src.row(
                "Wasserstein / baseline std",
                d.wasserstein_norm,
                fmt_num,
                above(th.wasserstein_norm, false),
                Some(Statistic::WassersteinNorm),
            ));
            rows.push(src.row(
                "Out-of-range rate",
                d.out_of_range_rate,
                fmt_pct,
                above(th.out_of_range_rate, true),
                Some(Statistic::OutOfRangeRate),
            ));
        }
    }
    let (mb, mw) = (defined(missing_baseline), defined(missing_window));
    let increase = mb.zip(mw).map(|(b, w)| w - b);
    rows.push(StatRow::new(
        "Missing rate",
        increase,
        format!("{} → {}", opt(mb, fmt_pct), opt(mw, fmt_pct)),
        defined(th.missing_rate_increase).map(|x| format!("increase &gt; {}", fmt_pct(x))),
        Some(Statistic::MissingRateIncrease),
        violations,
    ));
    rows
}

/// A categorical feature's unseen and vanished categories, under its statistics table.
fn category_lists(out: &mut String, d: &CategoricalDrift) {
    for (names, count, label) in [
        (&d.unseen, d.unseen_count, "Unseen categories"),
        (&d.vanished, d.vanished_count, "Vanished categories"),
    ] {
        if !names.is_empty() {
            // A report lists the heaviest few and counts them all; an older one lists them all
            // and reads back with a count of 0.
            let total = count.max(names.len());
            let names: Vec<String> = names.iter().take(MAX_LIST).map(|n| escape(n)).collect();
            w!(out, "<p><strong>{label}</strong> ({total}): ");
            list_of_into(out, &names, total);
            out.push_str("</p>");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Histograms.

const BASELINE_FILL: &str = "#8fa8c8";
const BASELINE_STROKE: &str = "#3f5a80";
const WINDOW_FILL: &str = "#e07b39";
const WINDOW_STROKE: &str = "#8a3f10";
/// The histogram of one feature: an SVG chart, baseline bar left of window bar in each bin,
/// and the same numbers in a table.
fn histogram(out: &mut String, name: &str, h: Option<&Histogram>) {
    let Some(h) = h else {
        out.push_str("<p class=\"muted\">No histogram in this report.</p>");
        return;
    };
    let side = |p: &Option<Vec<f64>>| p.as_deref().map(drawable);
    // Bins: numeric from the edges, categorical from the categories (plus the rest).
    let (mut labels, edges, mut baseline, mut window) = match h {
        Histogram::Numeric {
            edges,
            baseline,
            window,
        } => {
            let edges = drawable(edges);
            (
                bin_labels(&edges),
                Some(edges),
                side(baseline),
                side(window),
            )
        }
        Histogram::Categorical {
            categories,
            baseline,
            window,
            ..
        } => (categories.clone(), None, side(baseline), side(window)),
    };
    if let Histogram::Categorical {
        rest: Some(rest), ..
    } = h
    {
        labels.push(format!("{} other categories", rest.categories));
        for (side, p) in [(&mut baseline, rest.baseline), (&mut window, rest.window)] {
            if let Some(side) = side {
                side.push(defined(p).unwrap_or(0.0));
            }
        }
    }
    let n = labels.len();
    // A side whose length does not fit the bins is not drawn.
    let baseline = baseline.filter(|p| p.len() == n);
    let window = window.filter(|p| p.len() == n);
    if n == 0 || (baseline.is_none() && window.is_none()) {
        out.push_str("<p class=\"muted\">No values on either side to draw.</p>");
        return;
    }
    w!(
        out,
        "<p class=\"legend\"><span class=\"swatch\" style=\"background:{BASELINE_FILL}\"></span>\
         baseline (left bar){}<span class=\"swatch\" style=\"background:{WINDOW_FILL}\"></span>\
         window (right bar){}</p>",
        if baseline.is_none() {
            ": no values"
        } else {
            ""
        },
        if window.is_none() { ": no values" } else { "" },
    );
    bar_chart(
        out,
        name,
        &labels,
        edges.as_deref(),
        baseline.as_deref(),
        window.as_deref(),
    );
    // The same numbers, readable without the chart.
    out.push_str(
        "<details><summary>Bin proportions</summary><table><tr><th>Bin</th>\
         <th>Baseline</th><th>Window</th></tr>",
    );
    let cell = |side: &Option<Vec<f64>>, i: usize| {
        side.as_ref()
            .and_then(|p| p.get(i).copied())
            .map_or("—".to_string(), fmt_pct)
    };
    for (i, label) in labels.iter().enumerate() {
        w!(
            out,
            "<tr><td class=\"name\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(label),
            cell(&baseline, i),
            cell(&window, i)
        );
    }
    out.push_str("</table></details>");
}

/// Numeric bin names: `< e0`, `[e0, e1)`, …, `≥ e8`.
fn bin_labels(edges: &[f64]) -> Vec<String> {
    if edges.is_empty() {
        return vec!["all values".into()];
    }
    let mut labels = Vec::with_capacity(edges.len() + 1);
    labels.push(format!("< {}", fmt_num(edges[0])));
    for pair in edges.windows(2) {
        labels.push(format!("[{}, {})", fmt_num(pair[0]), fmt_num(pair[1])));
    }
    if let Some(last) = edges.last() {
        labels.push(format!("≥ {}", fmt_num(*last)));
    }
    labels
}

/// `text` cut to [`MAX_LABEL_CHARS`] characters, with an ellipsis when cut.
fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_LABEL_CHARS {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{cut}…")
    }
}

/// A proportion axis top: the smallest of a few round values that holds `max`.
fn axis_top(max: f64) -> f64 {
    const STEPS: [f64; 9] = [0.02, 0.04, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0];
    STEPS
        .iter()
        .copied()
        .find(|&s| s >= max)
        .unwrap_or(max.max(1.0))
}

/// An SVG chart's size and the margins around its plot area, where the axis labels and the
/// legend go.
struct ChartBox {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl ChartBox {
    fn plot_w(&self) -> f64 {
        self.w - self.left - self.right
    }

    fn plot_h(&self) -> f64 {
        self.h - self.top - self.bottom
    }

    /// A horizontal grid line at `y`, labelled on the y axis.
    fn grid_line(&self, out: &mut String, y: f64, label: &str) {
        w!(
            out,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e1e5ea\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            self.w - self.right,
            self.left - 4.0,
            y + 4.0,
            left = self.left,
        );
    }

    /// The x and y axes, drawn last so that nothing covers them, and the end of the SVG.
    fn axes_and_end(&self, out: &mut String) {
        let (left, top, plot_h) = (self.left, self.top, self.plot_h());
        w!(
            out,
            "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"#333\"/></svg>",
            top + plot_h,
            self.w - self.right,
            top + plot_h,
            top + plot_h
        );
    }
}

const BAR_BOX: ChartBox = ChartBox {
    w: 520.0,
    h: 260.0,
    left: 52.0,
    right: 10.0,
    top: 12.0,
    bottom: 78.0,
};

fn bar_chart(
    out: &mut String,
    name: &str,
    labels: &[String],
    edges: Option<&[f64]>,
    baseline: Option<&[f64]>,
    window: Option<&[f64]>,
) {
    let b = &BAR_BOX;
    let (w, h) = (b.w, b.h);
    let plot_h = b.plot_h();
    let n = labels.len().max(1);
    let max = baseline
        .into_iter()
        .chain(window)
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let scale = BarScale {
        gw: b.plot_w() / n as f64,
        plot_h,
        top: axis_top(max),
    };
    w!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-label=\"Histogram of {}: baseline and window proportions per bin\">",
        escape(name)
    );
    w!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>"
    );
    // Grid and y axis in percent.
    for k in 0..=4 {
        let v = scale.top * k as f64 / 4.0;
        let y = b.top + plot_h - plot_h * k as f64 / 4.0;
        b.grid_line(out, y, &fmt_axis_pct(v));
    }
    for (i, label) in labels.iter().enumerate() {
        scale.bin(out, i, label, baseline, window, edges.is_none());
    }
    if let Some(edges) = edges {
        scale.edge_labels(out, edges);
    }
    b.axes_and_end(out);
}

/// Where a histogram's bars go: `gw` pixels per bin, proportion `top` at the top of the plot.
struct BarScale {
    gw: f64,
    plot_h: f64,
    top: f64,
}

impl BarScale {
    /// A bar's height for proportion `v`; a share above zero gets at least a pixel, so that it
    /// shows.
    fn height(&self, v: f64) -> f64 {
        let h = (v / self.top * self.plot_h).clamp(0.0, self.plot_h);
        if v > 0.0 {
            h.max(1.0)
        } else {
            h
        }
    }

    /// Bin `i`: its baseline and window bars, each with its value on hover, and for a category
    /// (`labelled`) its name under it.
    fn bin(
        &self,
        out: &mut String,
        i: usize,
        label: &str,
        baseline: Option<&[f64]>,
        window: Option<&[f64]>,
        labelled: bool,
    ) {
        let (left, top, gw) = (BAR_BOX.left, BAR_BOX.top, self.gw);
        let gx = left + gw * i as f64;
        let bar_w = (gw * 0.38).max(1.0);
        for (side, values, x, fill, stroke) in [
            (
                "baseline",
                baseline,
                gx + gw * 0.1,
                BASELINE_FILL,
                BASELINE_STROKE,
            ),
            ("window", window, gx + gw * 0.52, WINDOW_FILL, WINDOW_STROKE),
        ] {
            let Some(v) = values.and_then(|p| p.get(i)).copied() else {
                continue;
            };
            let h = self.height(v);
            w!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\" fill=\"{fill}\" \
                 stroke=\"{stroke}\" stroke-width=\"0.8\"><title>{}: {side} {}</title></rect>",
                top + self.plot_h - h,
                escape(label),
                fmt_pct(v)
            );
        }
        if labelled {
            // Categories: a label under each bin.
            let x = gx + gw / 2.0;
            let y = top + self.plot_h + 12.0;
            w!(
                out,
                "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"end\" transform=\"rotate(-40 {x:.1} {y:.1})\">{}</text>",
                escape(&shorten(label))
            );
        }
    }

    /// Numeric bins: each edge at the boundary between its two bins, and a note on what the
    /// bins are.
    fn edge_labels(&self, out: &mut String, edges: &[f64]) {
        let b = &BAR_BOX;
        let (top, plot_h) = (b.top, self.plot_h);
        for (i, e) in edges.iter().enumerate() {
            let x = b.left + self.gw * (i + 1) as f64;
            let y = top + plot_h + 12.0;
            w!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#555\"/>\
                 <text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"end\" transform=\"rotate(-40 {x:.1} {y:.1})\">{}</text>",
                top + plot_h,
                top + plot_h + 4.0,
                escape(&fmt_num(*e))
            );
        }
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#5f6b7a\">bins: the baseline's deciles (outer bins open-ended)</text>",
            b.left + b.plot_w() / 2.0,
            b.h - 4.0
        );
    }
}

fn fmt_axis_pct(v: f64) -> String {
    let pct = v * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{pct:.0}%")
    } else {
        format!("{}%", fmt_num(pct))
    }
}

// ---------------------------------------------------------------------------------------------
// Live quality.

/// A quality metric: how it is read from a window, its group and how it is drawn.
struct Metric {
    group: &'static str,
    value: fn(&QualityWindow) -> Option<f64>,
    label: &'static str,
}

/// A window's classification metrics, when it has them.
fn classification(q: &QualityWindow) -> Option<&ClassificationScores> {
    q.classification.as_ref().and_then(Scored::scores)
}

/// A window's regression metrics, when it has them.
fn regression(q: &QualityWindow) -> Option<&RegressionScores> {
    q.regression.as_ref().and_then(Scored::scores)
}

const METRICS: [Metric; 7] = [
    Metric {
        group: "classification",
        value: |q| classification(q)?.accuracy,
        label: "accuracy",
    },
    Metric {
        group: "classification",
        value: |q| classification(q)?.precision,
        label: "precision (macro)",
    },
    Metric {
        group: "classification",
        value: |q| classification(q)?.recall,
        label: "recall (macro)",
    },
    Metric {
        group: "classification",
        value: |q| classification(q)?.f1,
        label: "F1 (macro)",
    },
    Metric {
        group: "classification",
        value: |q| classification(q)?.roc_auc,
        label: "ROC AUC",
    },
    Metric {
        group: "regression",
        value: |q| regression(q)?.mae,
        label: "MAE",
    },
    Metric {
        group: "regression",
        value: |q| regression(q)?.rmse,
        label: "RMSE",
    },
];

impl Metric {
    /// The metric in window `q`, when defined.
    fn of(&self, q: &QualityWindow) -> Option<f64> {
        defined((self.value)(q))
    }
}

/// Colours, and the marker and dash each series also differs by (not colour alone).
const SERIES: [(&str, &str, &str); 5] = [
    ("#1f5fa8", "circle", ""),
    ("#c0392b", "square", "6 3"),
    ("#2e7d32", "triangle", "2 3"),
    ("#7b3fa0", "diamond", "9 3 2 3"),
    ("#8d5a2b", "cross", "1 3"),
];

fn quality_section(out: &mut String, windows: &[QualityWindow]) {
    out.push_str("<section id=\"quality\"><h2>Live quality</h2>\n");
    if windows.is_empty() {
        out.push_str(
            "<p class=\"muted\">No feedback matched yet: quality appears once ground truth \
             arrives through <code>POST /v2/models/{model}/feedback</code>.</p></section>\n",
        );
        return;
    }
    let labels: Vec<String> = windows.iter().map(|q| short_time(&q.to)).collect();
    for group in ["classification", "regression"] {
        let series: Vec<(&Metric, Vec<Option<f64>>)> = METRICS
            .iter()
            .filter(|m| m.group == group)
            .map(|m| {
                let values = windows.iter().map(|q| m.of(q)).collect::<Vec<_>>();
                (m, values)
            })
            .filter(|(_, values)| values.iter().any(Option::is_some))
            .collect();
        if series.is_empty() {
            continue;
        }
        let top = if group == "classification" {
            1.0
        } else {
            let max = series
                .iter()
                .flat_map(|(_, v)| v.iter().flatten())
                .copied()
                .fold(0.0f64, f64::max);
            nice_ceiling(max)
        };
        w!(out, "<h3>{}</h3>", escape(&capitalize(group)));
        line_chart(out, group, &labels, &series, top);
    }
    quality_table(out, windows);
    out.push_str("</section>\n");
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `2026-12-01T23:07:38.013123Z` → `12-01 23:07:38`; anything else as given.
fn short_time(t: &str) -> String {
    match (t.get(5..10), t.get(11..19)) {
        (Some(day), Some(time)) if t.len() >= 19 => format!("{day} {time}"),
        _ => t.to_string(),
    }
}

/// A round axis top at or above `max` (1, 2 or 5 times a power of ten).
fn nice_ceiling(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&v| v >= max)
        .unwrap_or(max)
}

const LINE_BOX: ChartBox = ChartBox {
    w: 760.0,
    h: 270.0,
    left: 84.0,
    right: 16.0,
    top: 12.0,
    bottom: 92.0,
};

fn line_chart(
    out: &mut String,
    group: &str,
    labels: &[String],
    series: &[(&Metric, Vec<Option<f64>>)],
    top: f64,
) {
    let b = &LINE_BOX;
    let (w, h) = (b.w, b.h);
    let n = labels.len();
    let scale = LineScale { n, top };
    w!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-label=\"{} quality per window, oldest first\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>",
        escape(group)
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        b.grid_line(out, scale.y(v), &fmt_num(v));
    }
    // At most about a dozen time labels, evenly spread.
    let every = n.div_ceil(12).max(1);
    for (i, label) in labels.iter().enumerate() {
        if i % every != 0 && i + 1 != n {
            continue;
        }
        let x = scale.x(i);
        let y = b.top + b.plot_h() + 12.0;
        w!(
            out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {x:.1} {y:.1})\">{}</text>",
            escape(label)
        );
    }
    for (k, (metric, values)) in series.iter().enumerate() {
        scale.series(out, k, metric, values, labels);
    }
    b.axes_and_end(out);
}

/// Where a quality chart puts window `i` of `n` (x) and value `v` (y, with `top` at the top of
/// the plot).
struct LineScale {
    n: usize,
    top: f64,
}

impl LineScale {
    fn x(&self, i: usize) -> f64 {
        // Points stay clear of the y axis and its labels.
        const PAD: f64 = 14.0;
        let b = &LINE_BOX;
        if self.n <= 1 {
            b.left + b.plot_w() / 2.0
        } else {
            b.left + PAD + (b.plot_w() - 2.0 * PAD) * i as f64 / (self.n - 1) as f64
        }
    }

    fn y(&self, v: f64) -> f64 {
        let b = &LINE_BOX;
        b.top + b.plot_h() - (v / self.top).clamp(0.0, 1.0) * b.plot_h()
    }

    /// Series `k`: its line, a marker per defined value (with the value on hover), and its
    /// legend entry. Series differ by colour, marker and dash, so not by colour alone.
    fn series(
        &self,
        out: &mut String,
        k: usize,
        metric: &Metric,
        values: &[Option<f64>],
        labels: &[String],
    ) {
        let (colour, marker, dash) = SERIES[k % SERIES.len()];
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        // A line through consecutive defined points; a gap breaks it.
        let mut path = String::new();
        let mut pen_down = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    w!(
                        path,
                        "{}{:.1} {:.1} ",
                        if pen_down { "L" } else { "M" },
                        self.x(i),
                        self.y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        w!(
            out,
            "<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash_attr}/>",
            path.trim_end()
        );
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                marker_svg(out, marker, colour, self.x(i), self.y(*v));
                // The value on hover.
                w!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"transparent\"><title>{} {}: {}</title></circle>",
                    self.x(i),
                    self.y(*v),
                    metric.label,
                    escape(labels.get(i).map_or("", String::as_str)),
                    fmt_num(*v)
                );
            }
        }
        // Legend: a short line with the marker, then the name.
        let lx = LINE_BOX.left + (k % 4) as f64 * 170.0;
        let ly = LINE_BOX.h - 28.0 + (k / 4) as f64 * 16.0;
        w!(
            out,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"{dash_attr}/>",
            lx + 28.0
        );
        marker_svg(out, marker, colour, lx + 14.0, ly);
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 34.0,
            ly + 4.0,
            metric.label
        );
    }
}

fn marker_svg(out: &mut String, marker: &str, colour: &str, x: f64, y: f64) {
    match marker {
        "square" => w!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{colour}\"/>",
            x - 3.5,
            y - 3.5
        ),
        "triangle" => w!(
            out,
            "<path d=\"M{x:.1} {:.1} L{:.1} {:.1} L{:.1} {:.1} Z\" fill=\"{colour}\"/>",
            y - 4.5,
            x + 4.5,
            y + 3.5,
            x - 4.5,
            y + 3.5
        ),
        "diamond" => w!(
            out,
            "<path d=\"M{x:.1} {:.1} L{:.1} {y:.1} L{x:.1} {:.1} L{:.1} {y:.1} Z\" fill=\"{colour}\"/>",
            y - 5.0,
            x + 5.0,
            y + 5.0,
            x - 5.0
        ),
        "cross" => w!(
            out,
            "<path d=\"M{:.1} {:.1} L{:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            x - 4.0,
            y - 4.0,
            x + 4.0,
            y + 4.0,
            x - 4.0,
            y + 4.0,
            x + 4.0,
            y - 4.0
        ),
        _ => w!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{colour}\"/>"
        ),
    }
}

fn quality_table(out: &mut String, windows: &[QualityWindow]) {
    let shown: Vec<&Metric> = METRICS
        .iter()
        .filter(|m| windows.iter().any(|q| m.of(q).is_some()))
        .collect();
    out.push_str(
        "<details open><summary>Quality windows</summary><table><tr><th>From</th><th>To</th>\
         <th>Rows</th>",
    );
    for m in &shown {
        w!(out, "<th>{}</th>", m.label);
    }
    out.push_str("<th>Note</th></tr>");
    // Newest first: the one a reader looks for.
    for q in windows.iter().rev() {
        w!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td>",
            escape(&q.from),
            escape(&q.to),
            q.rows
        );
        for m in &shown {
            w!(
                out,
                "<td class=\"n\">{}</td>",
                m.of(q).map_or("—".into(), fmt_num)
            );
        }
        let mut notes = Vec::new();
        if q.filling {
            notes.push("still filling".to_string());
        }
        let errors = [
            q.classification.as_ref().and_then(Scored::error),
            q.regression.as_ref().and_then(Scored::error),
        ];
        notes.extend(errors.into_iter().flatten().map(escape));
        w!(out, "<td>{}</td></tr>", notes.join("; "));
    }
    out.push_str("</table></details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> PublishedDrift {
        serde_json::from_value(report_json()).expect("a report reads back")
    }

    fn report_json() -> serde_json::Value {
        json!({
            "model": "iris<b>",
            "version": 2,
            "from": "2026-01-01T00:00:00.000000Z",
            "to": "2026-01-01T00:05:00.000000Z",
            "rows": 200,
            "drifted": ["<script>alert(1)</script>"],
            "missing_in_baseline": [],
            "missing_in_window": ["gone & lost"],
            "features": {
                "<script>alert(1)</script>": {
                    "kind": "numeric", "psi": 0.9, "js": 0.4,
                    "ks": {"statistic": 0.5, "pvalue": 1e-20},
                    "wasserstein": 1.5, "wasserstein_norm": 1.2,
                    "missing_rate_baseline": 0.0, "missing_rate_window": 0.0,
                    "out_of_range_rate": 0.1, "drifted": true, "violations": ["psi", "ks"],
                    "histogram": {"edges": [1, 2, 3, 4, 5, 6, 7, 8, 9],
                                  "baseline": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                                  "window": [0, 0, 0, 0, 0, 0.1, 0.1, 0.2, 0.3, 0.3]}
                },
                "colour": {
                    "kind": "categorical", "psi": 0.01, "js": 0.02,
                    "chi2": {"statistic": 1.0, "dof": 1, "pvalue": 0.3},
                    "missing_rate_baseline": 0.0, "missing_rate_window": 0.0,
                    "unseen_rate": 0.0, "unseen": [], "vanished": ["\"quoted\""],
                    "drifted": false, "violations": [],
                    "histogram": {"categories": ["a'b", "<c>"], "baseline": [0.5, 0.5],
                                  "window": [0.4, 0.6]}
                },
                "flip": {"kind": "numeric", "error": "kinds <differ>", "drifted": false,
                         "violations": []}
            },
            "outputs": {},
            "thresholds": {"psi": 0.2, "alpha": 0.01, "js": null, "comparisons": 2,
                           "alpha_corrected": 0.005}
        })
    }

    fn quality() -> Vec<QualityWindow> {
        serde_json::from_value(json!([
            {"model": "iris", "version": 2, "from": "2026-01-01T00:00:00.000000Z",
             "to": "2026-01-01T00:01:00.000000Z", "rows": 100,
             "classification": {"rows": 100, "accuracy": 0.9, "precision": 0.8,
                                "recall": 0.85, "f1": 0.82, "roc_auc": null}},
            {"model": "iris", "version": 2, "from": "2026-01-01T00:01:00.000000Z",
             "to": "2026-01-01T00:02:00.000000Z", "rows": 40, "filling": true,
             "classification": {"rows": 40, "accuracy": 0.7, "precision": 0.6,
                                "recall": 0.65, "f1": 0.62, "roc_auc": null}},
        ]))
        .expect("quality windows read back")
    }

    fn page_of(report: &PublishedDrift, quality: &[QualityWindow]) -> String {
        drift_page("t", Some(report.into()), quality)
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("a\u{0}b\nc"), "a\u{fffd}b\nc");
        let html = page_of(&report(), &quality());
        assert!(!html.contains("<script>alert"), "a name is escaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("iris&lt;b&gt;"));
        assert!(html.contains("a&#39;b") && html.contains("&lt;c&gt;"));
        assert!(html.contains("&quot;quoted&quot;"));
        assert!(html.contains("kinds &lt;differ&gt;"));
        assert!(html.contains("gone &amp; lost"));
    }

    #[test]
    fn no_script_and_nothing_fetched() {
        let mut hostile_quality = quality();
        hostile_quality[0].from = "<script>alert(1)</script>".into();
        hostile_quality[1].classification = Some(Scored::Error {
            error: "<script>".into(),
        });
        let offline = report().report;
        for html in [
            page_of(&report(), &quality()),
            drift_page("t", None, &[]),
            drift_page("<script>", Some((&offline).into()), &hostile_quality),
        ] {
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("<script"), "no script");
            assert!(!lower.contains("javascript:"));
            // The SVG namespace is a name, not a fetch; nothing else may point anywhere.
            let without_ns = lower.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!without_ns.contains("http://"), "no http reference");
            assert!(!without_ns.contains("https://"), "no https reference");
            assert!(!lower.contains("<link") && !lower.contains("@import"));
            assert!(!lower.contains("url("), "no CSS fetch");
            assert!(!lower.contains("<img"));
            assert!(lower.starts_with("<!doctype html>"));
        }
    }

    #[test]
    fn violated_statistics_are_marked_in_words() {
        let html = page_of(&report(), &quality());
        // PSI and KS of the drifted feature: the row class and the word.
        assert_eq!(html.matches("<tr class=\"violated\">").count(), 2);
        assert_eq!(html.matches("✗ VIOLATED").count(), 2);
        let psi_row = html
            .split("<tr")
            .find(|row| row.contains("violated") && row.contains("PSI"))
            .expect("the PSI row is marked");
        assert!(psi_row.contains("0.9") && psi_row.contains("&gt; 0.2"));
        assert!(html.contains("DRIFTED") && html.contains("⚠ DRIFT"));
        assert!(html.contains("NOT COMPARED"));
        // Each drawn histogram: an SVG with both sides' bars.
        assert_eq!(
            html.matches("<svg").count(),
            2 + 1,
            "two histograms, one quality chart"
        );
        assert!(html.contains("still filling"));
    }

    #[test]
    fn capped_category_lists_say_how_many_there_are_in_all() {
        let mut r = report_json();
        let listed: Vec<String> = (0..20).map(|i| format!("new{i:02}")).collect();
        r["features"]["colour"]["unseen"] = json!(listed);
        r["features"]["colour"]["unseen_count"] = json!(999);
        let page = page_of(&serde_json::from_value(r).unwrap(), &[]);
        assert!(page.contains("Unseen categories</strong> (999): new00, new01"));
        assert!(page.contains("new19 and 979 more"), "{page}");
    }

    #[test]
    fn a_page_before_any_window_says_so() {
        let html = drift_page("iris", None, &quality());
        assert!(html.contains("No drift window has closed yet"));
        assert!(html.contains("Live quality"));
    }

    #[test]
    fn an_offline_report_has_no_window_line() {
        let published = report();
        let html = drift_page("t", Some((&published.report).into()), &[]);
        assert!(html.contains("<dt>Window</dt><dd>unknown to unknown</dd>"));
        assert!(!html.contains("<dt>Model</dt>"));
        let live = page_of(&published, &[]);
        assert!(live.contains("<p>model iris&lt;b&gt; · version 2 · window 2026-01-01T00:00"));
    }

    #[test]
    fn odd_histograms_and_numbers_render_without_panicking() {
        let mut r = report();
        let features = &mut r.report.features;
        let numeric = features.get_mut("<script>alert(1)</script>").unwrap();
        numeric.histogram = Some(Histogram::Numeric {
            edges: vec![1.0, f64::NAN],
            baseline: Some(vec![0.5]),
            window: None,
        });
        if let Comparison::Numeric(d) = &mut numeric.comparison {
            d.psi = Some(f64::INFINITY);
            d.ks = None;
        }
        let colour = features.get_mut("colour").unwrap();
        colour.histogram = Some(Histogram::Categorical {
            categories: vec!["a".into()],
            baseline: Some(vec![1e308]),
            window: Some(vec![-1.0]),
            rest: Some(crate::report::RestOfCategories {
                categories: 5,
                baseline: None,
                window: Some(f64::NAN),
            }),
        });
        features.get_mut("flip").unwrap().histogram = Some(Histogram::Categorical {
            categories: Vec::new(),
            baseline: Some(Vec::new()),
            window: None,
            rest: None,
        });
        let mut quality = quality();
        quality[0].regression = Some(Scored::Scores(crate::quality::RegressionScores {
            rows: 1,
            mae: Some(1e300),
            rmse: Some(f64::NAN),
        }));
        let html = page_of(&r, &quality);
        assert!(html.ends_with("</html>\n"));
        assert!(html.contains("No values on either side to draw."));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(12.0), "12");
        assert_eq!(fmt_num(1e-20), "1e-20");
        assert_eq!(fmt_num(2.5e-7), "2.5e-7");
        assert_eq!(fmt_num(123456.0), "123456");
        assert_eq!(fmt_num(f64::INFINITY), "∞");
        assert_eq!(fmt_pct(0.25), "25.00%");
        assert_eq!(short_time("2026-12-01T23:07:38.013123Z"), "12-01 23:07:38");
        assert_eq!(short_time("x"), "x");
        assert_eq!(shorten("abcdefghijklmnopqrstuvwxyz").chars().count(), 14);
        assert_eq!(nice_ceiling(0.37), 0.5);
        assert_eq!(axis_top(0.31), 0.4);
    }
}
