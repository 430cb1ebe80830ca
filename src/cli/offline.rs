//! The offline commands: `cairn baseline` summarizes a data file into `baseline.json`, and
//! `cairn drift` compares a window (a file, or a model's prediction log) with a baseline. They
//! compute exactly what the server computes on live windows, so a report made offline and one
//! served by the server agree on the same rows.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_monitor::baseline::{Baseline, BaselineOptions};
use cairn_monitor::dataset::{self, LogFilter, Table};
use cairn_monitor::report::{self, DriftReport, Thresholds};

/// Largest `baseline.json` or thresholds file read: a baseline holds at most a few samples of
/// 10,000 values per feature, far below this.
const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// Why an offline command failed; printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    Data(#[from] dataset::DatasetError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> OfflineError {
    OfflineError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `cairn baseline`.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// Training or reference data: CSV (header line, empty field = missing) or Parquet.
    /// Columns named `output.<name>` are the model's outputs (prediction drift). Or a model's
    /// prediction log: its directory (`<prediction_log_dir>/<model>`), or in a log store
    /// (`s3://bucket/logs/<model>`: every replica's segments, the date partitions of
    /// `--from`/`--to` only).
    #[arg(long)]
    pub data: PathBuf,
    /// Log rows at or after this time (RFC 3339 or Unix seconds); a log only.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Log rows before this time; a log only.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// Log rows of this model version only; a log only.
    #[arg(long)]
    pub version: Option<u64>,
    /// Write `baseline.json` into this model version directory (`<repo>/<model>/<version>`).
    #[arg(long, conflicts_with = "out")]
    pub model_dir: Option<PathBuf>,
    /// Write the baseline to this file. Without `--out` or `--model-dir`: standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Treat this column as categorical even if every value is a number (repeatable).
    #[arg(long = "categorical", value_name = "NAME")]
    pub categorical: Vec<String>,
    /// Raw values kept per numeric feature: exact up to this many, a uniform sample beyond.
    #[arg(long, default_value_t = BaselineOptions::default().sample_size)]
    pub sample_size: usize,
    /// Seed of the reservoir sample, for reproducible baselines.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `cairn drift`.
#[derive(Debug, clap::Args)]
pub struct DriftArgs {
    /// The reference: a `baseline.json`, or a CSV/Parquet file summarized on the fly.
    #[arg(long)]
    pub baseline: PathBuf,
    /// The window: a CSV/Parquet file, or a model's prediction log: its directory
    /// (`<prediction_log_dir>/<model>`), or in a log store (`s3://bucket/logs/<model>`, any
    /// `log_store` URL with the model after it): every replica's segments, only the date
    /// partitions that can hold `--from`/`--to` downloaded (at most
    /// `CAIRN_LOG_STORE_READ_MAX_BYTES`, 4 GiB by default).
    #[arg(long)]
    pub window: PathBuf,
    /// Log rows at or after this time (RFC 3339, e.g. `2026-12-01T10:00:00Z`, or Unix seconds).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,
    /// Log rows before this time.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,
    /// Log rows of this model version only.
    #[arg(long)]
    pub version: Option<u64>,
    /// Include the log's shadow copies (off: their outputs never reached a caller).
    #[arg(long)]
    pub shadow: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Treat this column as categorical (repeatable).
    #[arg(long = "categorical", value_name = "NAME")]
    pub categorical: Vec<String>,
    /// Thresholds as in a model's `[monitoring.thresholds]`: a TOML file with `psi`, `alpha`,
    /// `js`, ... at top level, or a model's `config.toml`.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Exit with status 3 when any feature or output drifted (for pipelines).
    #[arg(long)]
    pub fail_on_drift: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Html,
}

/// What a command did, for the exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Drifted,
}

/// Microseconds since the epoch from RFC 3339 or Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs.abs() < 1e13 {
            return Ok((secs * 1e6).round() as i64);
        }
        return Err(format!("{s} is not a time in Unix seconds"));
    }
    let at = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s} is not an RFC 3339 time ({e}), nor Unix seconds"))?;
    Ok(match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    })
}

/// Runs `cairn baseline`.
pub fn baseline(args: &BaselineArgs) -> Result<Outcome, OfflineError> {
    let options = BaselineOptions {
        sample_size: args.sample_size,
        seed: args.seed,
    };
    let filter = LogFilter {
        from_us: args.from,
        to_us: args.to,
        version: args.version,
        shadow: false,
    };
    let table = read_data(&args.data, &args.categorical, &filter)?;
    let baseline = Baseline::from_columns(&table.features, &table.outputs, &options);
    let json = baseline.to_json().map_err(|e| file_error(&args.data, e))?;
    let target = match (&args.model_dir, &args.out) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                return Err(file_error(dir, "not a model version directory"));
            }
            Some(dir.join("baseline.json"))
        }
        (None, out) => out.clone(),
    };
    write_or_print(target.as_deref(), json.as_bytes())?;
    if let Some(path) = target {
        eprintln!(
            "baseline of {} rows, {} features, {} outputs written to {}",
            baseline.rows,
            baseline.features.len(),
            baseline.outputs.len(),
            path.display()
        );
    }
    Ok(Outcome::Done)
}

/// Runs `cairn drift`.
pub fn drift(args: &DriftArgs) -> Result<Outcome, OfflineError> {
    let thresholds = match &args.thresholds {
        Some(path) => read_thresholds(path)?,
        None => Thresholds::default(),
    };
    let baseline = read_baseline(&args.baseline, &args.categorical)?;
    let filter = LogFilter {
        from_us: args.from,
        to_us: args.to,
        version: args.version,
        shadow: args.shadow,
    };
    let staged = from_store(&args.window, &filter)?;
    let source = staged.as_ref().map_or(args.window.as_path(), |s| s.path());
    if !source.is_dir() && (args.from.is_some() || args.to.is_some() || args.version.is_some()) {
        return Err(OfflineError::Usage(
            "--from, --to and --version select rows of a prediction log directory; the window \
             is a file"
                .into(),
        ));
    }
    let window = dataset::read(source, &args.categorical, &filter)?;
    if window.rows == 0 {
        return Err(file_error(&args.window, "the window has no rows"));
    }
    let report = report::drift(&baseline, &window.features, &window.outputs, &thresholds);
    let body = render(&report, args)?;
    write_or_print(args.out.as_deref(), body.as_bytes())?;
    Ok(if report.drifted.is_empty() || !args.fail_on_drift {
        Outcome::Done
    } else {
        Outcome::Drifted
    })
}

/// A report as `cairn drift` writes it: the comparison, and what it compared when, for whoever
/// finds the file later.
#[derive(serde::Serialize)]
struct OfflineReport<'a> {
    #[serde(flatten)]
    report: &'a DriftReport,
    baseline_source: String,
    window_source: String,
    /// RFC 3339, to the second.
    generated: String,
}

fn render(report: &DriftReport, args: &DriftArgs) -> Result<String, OfflineError> {
    Ok(match args.format {
        Format::Json => {
            let written = OfflineReport {
                report,
                baseline_source: args.baseline.display().to_string(),
                window_source: args.window.display().to_string(),
                generated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            };
            let mut s = serde_json::to_string_pretty(&written)
                .map_err(|e| OfflineError::Usage(e.to_string()))?;
            s.push('\n');
            s
        }
        Format::Html => cairn_monitor::html::drift_page(
            &format!("Drift: {}", args.window.display()),
            Some(report.into()),
            &[],
        ),
    })
}

/// A data file, or a prediction log (a directory, or in a log store) under `filter`.
fn read_data(
    path: &Path,
    categorical: &[String],
    filter: &LogFilter,
) -> Result<Table, OfflineError> {
    let staged = from_store(path, filter)?;
    let source = staged.as_ref().map_or(path, |s| s.path());
    let is_log = source.is_dir();
    if !is_log && (filter.from_us.is_some() || filter.to_us.is_some() || filter.version.is_some()) {
        return Err(OfflineError::Usage(
            "--from, --to and --version select rows of a prediction log; the data is a file".into(),
        ));
    }
    let table = dataset::read(source, categorical, filter)?;
    if table.rows == 0 {
        return Err(file_error(path, "no rows"));
    }
    Ok(table)
}

/// A model's log in a log store (`path` is its URL), downloaded for `filter`'s range into a
/// temporary directory laid out as a local log, which the readers then read; `None` for a
/// local path.
fn from_store(path: &Path, filter: &LogFilter) -> Result<Option<tempfile::TempDir>, OfflineError> {
    use crate::monitoring::log_store::read::{blocking, read_max_bytes, Selection, StoreLog};
    let Some(url) = path.to_str().filter(|p| crate::store::is_url(p)) else {
        return Ok(None);
    };
    let failed = |reason: String| file_error(path, reason);
    let log = StoreLog::open(url, None).map_err(failed)?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-log-")
        .tempdir()
        .map_err(|e| failed(format!("cannot make a temporary directory: {e}")))?;
    let selection = Selection {
        from_us: filter.from_us,
        to_us: filter.to_us,
        feedback: false,
        local: None,
    };
    let max = read_max_bytes().map_err(OfflineError::Usage)?;
    let staged = blocking(log.stage(&selection, dir.path(), max)).map_err(failed)?;
    eprintln!(
        "{}: {} segments ({} bytes) from {} date partitions",
        log.url(),
        staged.segments,
        staged.bytes,
        staged.partitions
    );
    Ok(Some(dir))
}

/// A `baseline.json`, or a data file summarized as `cairn baseline` would.
fn read_baseline(path: &Path, categorical: &[String]) -> Result<Baseline, OfflineError> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = read_text(path)?;
        return Baseline::from_json(&text).map_err(|e| file_error(path, e));
    }
    let table = read_data(path, categorical, &LogFilter::default())?;
    Ok(Baseline::from_columns(
        &table.features,
        &table.outputs,
        &BaselineOptions::default(),
    ))
}

/// Thresholds from a TOML file: the table itself, or `[monitoring.thresholds]` of a model's
/// `config.toml`.
fn read_thresholds(path: &Path) -> Result<Thresholds, OfflineError> {
    let text = read_text(path)?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| file_error(path, e))?;
    let table = match value.get("monitoring") {
        Some(toml::Value::Table(m)) => match m.get("thresholds") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        },
        _ => value,
    };
    let thresholds: Thresholds = table.try_into().map_err(|e| file_error(path, e))?;
    thresholds.validate().map_err(|e| file_error(path, e))?;
    Ok(thresholds)
}

fn read_text(path: &Path) -> Result<String, OfflineError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(file_error(
            path,
            format!(
                "{} bytes, more than the {MAX_CONFIG_BYTES} read",
                meta.len()
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

/// Writes atomically (a reader never sees half a file), or prints.
fn write_or_print(path: Option<&Path>, bytes: &[u8]) -> Result<(), OfflineError> {
    use std::io::Write;
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| OfflineError::Usage(format!("cannot write to standard output: {e}")));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| file_error(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| file_error(path, e))?;
    // A temporary file is private; what replaces a baseline or report is readable as any
    // file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| file_error(path, e))?;
    }
    file.persist(path).map_err(|e| file_error(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1.5"), Ok(1_500_000));
        assert_eq!(
            parse_time("2026-12-01T23:07:38.013123Z"),
            Ok(1_796_166_458_013_123)
        );
        assert_eq!(
            parse_time("2026-12-01 23:07:38Z"),
            Ok(1_796_166_458_000_000)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1e300").is_err());
    }
}
