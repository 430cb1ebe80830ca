//! Data sources: a CSV or Parquet file, or a model's prediction log joined with its feedback.
//! Everything becomes one [`Frame`]: the features as FP32-ready numbers in the config's order
//! (categories as their numeric codes, missing as NaN), the target, and the columns a split needs.
//! Rows without a target are left out and counted.

use std::collections::HashMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType, UInt32Type};
use arrow_array::{Array, RecordBatch};
use cairn_monitor::column::Column;
use cairn_monitor::dataset::{self, Table};
use cairn_monitor::log::{format_number, read_dir};
use serde::Serialize;

use crate::config::{DataConfig, LogSource};

/// Rows a source may hold; a larger file is refused before it is turned into a matrix.
pub const MAX_ROWS: usize = 20_000_000;

/// The target of every row.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Class labels as text (numbers as a label reads: `1`, not `1.0`).
    Labels(Vec<String>),
    Values(Vec<f64>),
}

impl Target {
    pub fn len(&self) -> usize {
        match self {
            Target::Labels(v) => v.len(),
            Target::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows ready for a split.
#[derive(Clone, Debug)]
pub struct Frame {
    pub features: Vec<String>,
    /// Row-major `[rows, features]`; NaN is missing.
    pub x: Vec<f64>,
    pub target: Target,
    /// Seconds since the epoch, per row, when a time column was named.
    pub time: Option<Vec<f64>>,
    /// The split column's values, when one was named.
    pub split: Option<Vec<Option<String>>>,
    pub summary: SourceSummary,
}

impl Frame {
    pub fn rows(&self) -> usize {
        self.target.len()
    }

    pub fn width(&self) -> usize {
        self.features.len()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.width()..(i + 1) * self.width()]
    }
}

/// What a source held, for the run record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceSummary {
    pub source: String,
    pub rows_read: usize,
    /// Rows left out for having no label (or no target value).
    pub unlabelled: usize,
    /// Log rows left out for being shadow copies or failed requests.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_served: usize,
    /// A log source's labelled rows (request id and row) that no prediction read holds: a wrong
    /// id, or a row answered outside the data read (another range, or, from a log store,
    /// partitions not read). The join's "unknown", over every replica's log.
    #[serde(skip_serializing_if = "is_zero")]
    pub labels_unmatched: usize,
}

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Read(String),
    #[error("column '{column}' {reason}")]
    Column { column: String, reason: String },
    #[error("{0}")]
    Empty(String),
}

/// Reads the configured source. `classify`: the target is a class label.
/// `split_column`: a column of the file naming each row's split.
pub fn load(
    config: &DataConfig,
    model: &str,
    classify: bool,
    split_column: Option<&str>,
) -> Result<Frame, DataError> {
    match (&config.path, &config.log) {
        (Some(path), _) => from_file(path, config, classify, split_column),
        (_, Some(log)) => from_log(log, config, model, classify),
        _ => Err(DataError::Read("no data source".into())),
    }
}

fn from_file(
    path: &Path,
    config: &DataConfig,
    classify: bool,
    split_column: Option<&str>,
) -> Result<Frame, DataError> {
    let mut categorical = config.categorical.clone();
    categorical.extend(split_column.map(str::to_string));
    if classify {
        categorical.extend(config.target.clone());
    }
    categorical.extend(config.time_column.clone());
    let table = dataset::read(path, &categorical, &Default::default())
        .map_err(|e| DataError::Read(e.to_string()))?;
    if table.rows > MAX_ROWS {
        return Err(DataError::Read(format!(
            "{}: {} rows; at most {MAX_ROWS} are trained on",
            path.display(),
            table.rows
        )));
    }
    let target_name = config.target.as_deref().unwrap_or_default();
    let target = column(&table, target_name)?;
    let keep: Vec<bool> = match target {
        Column::Numeric(v) => v.iter().map(|x| !x.is_nan()).collect(),
        Column::Categorical(v) => v.iter().map(Option::is_some).collect(),
    };
    let kept = keep.iter().filter(|k| **k).count();
    let target = to_target(target, &keep, classify, target_name)?;
    let mut x = vec![0.0; kept * config.features.len()];
    for (j, name) in config.features.iter().enumerate() {
        let values = feature_values(column(&table, name)?, name)?;
        for (k, v) in kept_rows(&keep).zip(0..) {
            x[v * config.features.len() + j] = values[k];
        }
    }
    let time = match &config.time_column {
        Some(name) => Some(time_values(column(&table, name)?, name, &keep)?),
        None => None,
    };
    let split = match split_column {
        Some(name) => match column(&table, name)? {
            Column::Categorical(v) => Some(kept_rows(&keep).map(|i| v[i].clone()).collect()),
            Column::Numeric(_) => unreachable!("read as categorical"),
        },
        None => None,
    };
    Ok(Frame {
        features: config.features.clone(),
        x,
        target,
        time,
        split,
        summary: SourceSummary {
            source: path.display().to_string(),
            rows_read: table.rows,
            unlabelled: table.rows - kept,
            not_served: 0,
            labels_unmatched: 0,
        },
    })
}

fn kept_rows(keep: &[bool]) -> impl Iterator<Item = usize> + '_ {
    keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i)
}

fn column<'t>(table: &'t Table, name: &str) -> Result<&'t Column, DataError> {
    table
        .features
        .iter()
        .chain(&table.outputs)
        .find(|(n, _)| n == name)
        .map(|(_, c)| c)
        .ok_or_else(|| DataError::Column {
            column: name.to_string(),
            reason: format!(
                "is not in the data (it has {})",
                table
                    .features
                    .iter()
                    .chain(&table.outputs)
                    .map(|(n, _)| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// A feature's values as numbers: categories must be numeric codes, since the exported model
/// takes one FP32 tensor.
fn feature_values(column: &Column, name: &str) -> Result<Vec<f64>, DataError> {
    match column {
        Column::Numeric(v) => Ok(v.clone()),
        Column::Categorical(v) => v
            .iter()
            .map(|s| match s {
                None => Ok(f64::NAN),
                Some(s) => s.parse::<f64>().map_err(|_| DataError::Column {
                    column: name.to_string(),
                    reason: format!(
                        "holds '{s}', not a number: the exported model takes one FP32 tensor, \
                         so categories must be numeric codes"
                    ),
                }),
            })
            .collect(),
    }
}

fn to_target(
    column: &Column,
    keep: &[bool],
    classify: bool,
    name: &str,
) -> Result<Target, DataError> {
    Ok(match (column, classify) {
        (Column::Categorical(v), true) => Target::Labels(
            kept_rows(keep)
                .map(|i| v[i].clone().unwrap_or_default())
                .collect(),
        ),
        (Column::Numeric(v), true) => {
            Target::Labels(kept_rows(keep).map(|i| format_number(v[i])).collect())
        }
        (Column::Numeric(v), false) => Target::Values(kept_rows(keep).map(|i| v[i]).collect()),
        (Column::Categorical(v), false) => Target::Values(
            kept_rows(keep)
                .map(|i| {
                    let s = v[i].as_deref().unwrap_or_default();
                    s.parse::<f64>().map_err(|_| DataError::Column {
                        column: name.to_string(),
                        reason: format!(
                            "holds '{s}', not a number, and a regressor's target is one"
                        ),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn time_values(column: &Column, name: &str, keep: &[bool]) -> Result<Vec<f64>, DataError> {
    kept_rows(keep)
        .map(|i| match column {
            Column::Numeric(v) if !v[i].is_nan() => Ok(v[i]),
            Column::Categorical(v) => {
                let s = v[i].as_deref().unwrap_or_default();
                parse_time(s).ok_or_else(|| DataError::Column {
                    column: name.to_string(),
                    reason: format!("holds '{s}': neither seconds nor an RFC 3339 time"),
                })
            }
            _ => Err(DataError::Column {
                column: name.to_string(),
                reason: format!("row {i} has no time"),
            }),
        })
        .collect()
}

/// Seconds since the epoch, or an RFC 3339 time, as seconds.
pub fn parse_time(s: &str) -> Option<f64> {
    if let Ok(x) = s.trim().parse::<f64>() {
        return x.is_finite().then_some(x);
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_secs_f64())
}

/// The prediction log joined with feedback: one row per served, labelled prediction.
fn from_log(
    log: &LogSource,
    config: &DataConfig,
    model: &str,
    classify: bool,
) -> Result<Frame, DataError> {
    let model = log.model.as_deref().unwrap_or(model);
    let named = log.dir.as_ref().ok_or_else(|| {
        DataError::Read("data.log.dir: the prediction log directory is needed".into())
    })?;
    let dir = match &log.staged {
        Some(staged) => staged.join(model),
        None if named.to_str().is_some_and(|d| d.contains("://")) => {
            return Err(DataError::Read(format!(
                "data.log.dir: '{}' is a log store, which `cairn train` and the server read; \
                 this reader reads directories",
                named.display()
            )))
        }
        None => named.join(model),
    };
    let window = TimeWindow {
        from_us: time_bound("from", &log.from)?,
        to_us: time_bound("to", &log.to)?,
    };
    let feedback = read_log(&dir, "feedback", model)?;
    let predictions = read_log(&dir, "predictions", model)?;
    let truth = truth_by_row(&feedback, classify)?;
    let mut summary = SourceSummary {
        source: format!("prediction log {}", named.join(model).display()),
        ..SourceSummary::default()
    };
    let mut picked = pick_labelled(
        &predictions,
        &truth,
        &config.features,
        window,
        &dir,
        &mut summary,
    )?;
    summary.labels_unmatched = unmatched(&predictions, &truth)?;
    // Segments are in time order, rows within a segment nearly so: sort to be sure.
    picked.sort_by_key(|(t, _, _)| *t);
    if let Some(n) = log.last_rows {
        let drop = picked.len().saturating_sub(n);
        picked.drain(..drop);
    }
    let width = config.features.len();
    let mut x = Vec::with_capacity(picked.len() * width);
    let mut time = Vec::with_capacity(picked.len());
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for (t, row, truth) in picked {
        x.extend(row);
        time.push(t as f64 / 1e6);
        match truth {
            Truth::Label(l) => labels.push(l),
            Truth::Value(v) => values.push(v),
        }
    }
    Ok(Frame {
        features: config.features.clone(),
        x,
        target: if classify {
            Target::Labels(labels)
        } else {
            Target::Values(values)
        },
        time: Some(time),
        split: None,
        summary,
    })
}

/// `data.log.from` or `data.log.to` as microseconds (the log's time unit).
fn time_bound(key: &str, v: &Option<String>) -> Result<Option<i64>, DataError> {
    v.as_deref()
        .map(|s| {
            parse_time(s)
                .map(|secs| (secs * 1e6) as i64)
                .ok_or_else(|| DataError::Read(format!("data.log.{key}: '{s}' is not a time")))
        })
        .transpose()
}

/// Every batch of the model's `sub` log (`feedback` or `predictions`); a missing directory
/// most likely means monitoring is off, and the error says so.
fn read_log(dir: &Path, sub: &str, model: &str) -> Result<Vec<RecordBatch>, DataError> {
    let path = dir.join(sub);
    if !path.is_dir() {
        return Err(DataError::Read(format!(
            "{}: no such log directory (is monitoring on for '{model}'?)",
            path.display()
        )));
    }
    read_dir(&path)
        .map(|(batches, _)| batches)
        .map_err(|e| DataError::Read(e.to_string()))
}

/// The truth per (request, row). A row labelled more than once (a client that retries, or
/// the same label sent to two replicas) takes the label received first, as the live index
/// does (a row's first feedback counts, later ones are duplicates), whatever order the files
/// are read in; equal receipt times keep the first read.
fn truth_by_row(
    feedback: &[RecordBatch],
    classify: bool,
) -> Result<HashMap<(String, u32), Truth>, DataError> {
    let mut truth: HashMap<(String, u32), (i64, Truth)> = HashMap::new();
    for batch in feedback {
        let ids = string_column(batch, "request_id")?;
        let rows = batch_column(batch, "row")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| DataError::Read("feedback log: 'row' is not UInt32".into()))?;
        let labels = string_column(batch, "label")?;
        let targets = batch_column(batch, "target")?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| DataError::Read("feedback log: 'target' is not Float64".into()))?;
        let received = batch_column(batch, "received")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| DataError::Read("feedback log: 'received' is not a timestamp".into()))?;
        for i in 0..batch.num_rows() {
            let t = if classify {
                (!labels.is_null(i)).then(|| Truth::Label(labels.value(i).to_string()))
            } else {
                (!targets.is_null(i)).then(|| Truth::Value(targets.value(i)))
            };
            let Some(t) = t else { continue };
            let at = received.value(i);
            match truth.entry((ids.value(i).to_string(), rows.value(i))) {
                std::collections::hash_map::Entry::Occupied(mut kept) => {
                    if at < kept.get().0 {
                        kept.insert((at, t));
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert((at, t));
                }
            }
        }
    }
    Ok(truth.into_iter().map(|(k, (_, t))| (k, t)).collect())
}

/// Labels whose (request id, row) no logged prediction holds.
fn unmatched(
    predictions: &[RecordBatch],
    truth: &HashMap<(String, u32), Truth>,
) -> Result<usize, DataError> {
    let mut logged: std::collections::HashSet<(&str, u32)> = std::collections::HashSet::new();
    for batch in predictions {
        let ids = string_column(batch, "request_id")?;
        let rows = batch_column(batch, "row")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| DataError::Read("prediction log: 'row' is not UInt32".into()))?;
        for i in 0..batch.num_rows() {
            logged.insert((ids.value(i), rows.value(i)));
        }
    }
    Ok(truth
        .keys()
        .filter(|(id, row)| !logged.contains(&(id.as_str(), *row)))
        .count())
}

/// `data.log.from`/`to` in microseconds: rows predicted at or after `from_us` and before
/// `to_us`.
#[derive(Clone, Copy)]
struct TimeWindow {
    from_us: Option<i64>,
    to_us: Option<i64>,
}

/// The served predictions in `window` that have a truth, as (time, features, truth), counting
/// in `summary` the rows read and why the others were left out. Stops once more than
/// [`MAX_ROWS`] rows were read.
fn pick_labelled(
    predictions: &[RecordBatch],
    truth: &HashMap<(String, u32), Truth>,
    features: &[String],
    window: TimeWindow,
    dir: &Path,
    summary: &mut SourceSummary,
) -> Result<Vec<(i64, Vec<f64>, Truth)>, DataError> {
    let mut picked: Vec<(i64, Vec<f64>, Truth)> = Vec::new();
    for batch in predictions {
        let ids = string_column(batch, "request_id")?;
        let rows = batch_column(batch, "row")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| DataError::Read("prediction log: 'row' is not UInt32".into()))?;
        let times = batch_column(batch, "time")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| DataError::Read("prediction log: 'time' is not a timestamp".into()))?;
        let arms = string_column(batch, "arm")?;
        let status = string_column(batch, "status")?;
        let mut columns = Vec::with_capacity(features.len());
        for name in features {
            columns.push(log_feature(batch, name)?);
        }
        for i in 0..batch.num_rows() {
            let t = times.value(i);
            if window.from_us.is_some_and(|f| t < f) || window.to_us.is_some_and(|e| t >= e) {
                continue;
            }
            summary.rows_read += 1;
            if arms.value(i) == "shadow" || status.value(i) != "ok" {
                summary.not_served += 1;
                continue;
            }
            let Some(truth) = truth.get(&(ids.value(i).to_string(), rows.value(i))) else {
                summary.unlabelled += 1;
                continue;
            };
            let x = columns
                .iter()
                .map(|c| c.value(i))
                .collect::<Result<Vec<_>, _>>()?;
            picked.push((t, x, truth.clone()));
        }
        if summary.rows_read > MAX_ROWS {
            return Err(DataError::Read(format!(
                "{}: more than {MAX_ROWS} rows; narrow data.log.from/to",
                dir.display()
            )));
        }
    }
    Ok(picked)
}

#[derive(Clone, Debug, PartialEq)]
enum Truth {
    Label(String),
    Value(f64),
}

fn batch_column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b dyn Array, DataError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| DataError::Column {
            column: name.to_string(),
            reason: "is not in the log".into(),
        })
}

fn string_column<'b>(
    batch: &'b RecordBatch,
    name: &str,
) -> Result<&'b arrow_array::StringArray, DataError> {
    batch_column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| DataError::Column {
            column: name.to_string(),
            reason: "is not a string column".into(),
        })
}

enum LogColumn<'b> {
    Number(&'b arrow_array::Float64Array),
    Text(&'b arrow_array::StringArray, String),
}

impl LogColumn<'_> {
    fn value(&self, i: usize) -> Result<f64, DataError> {
        match self {
            LogColumn::Number(a) => Ok(if a.is_null(i) { f64::NAN } else { a.value(i) }),
            LogColumn::Text(a, name) => {
                if a.is_null(i) {
                    return Ok(f64::NAN);
                }
                a.value(i).parse().map_err(|_| DataError::Column {
                    column: name.clone(),
                    reason: format!(
                        "holds '{}', not a number: categories must be numeric codes",
                        a.value(i)
                    ),
                })
            }
        }
    }
}

fn log_feature<'b>(batch: &'b RecordBatch, name: &str) -> Result<LogColumn<'b>, DataError> {
    let c = batch_column(batch, name)?;
    if let Some(a) = c.as_primitive_opt::<Float64Type>() {
        return Ok(LogColumn::Number(a));
    }
    if let Some(a) = c.as_string_opt::<i32>() {
        return Ok(LogColumn::Text(a, name.to_string()));
    }
    Err(DataError::Column {
        column: name.to_string(),
        reason: format!("has type {} in the log", c.data_type()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_monitor::feedback::{batch, FeedbackItem};

    fn label(id: &str, label: &str) -> FeedbackItem {
        FeedbackItem {
            id: id.into(),
            row: 0,
            label: Some(label.into()),
            target: None,
            time_us: None,
        }
    }

    /// Labels for rows no prediction read holds are the join's unknown ids.
    #[test]
    fn labels_for_no_prediction_are_counted() {
        use arrow_array::{ArrayRef, StringArray, UInt32Array};
        let predictions = RecordBatch::try_from_iter(vec![
            (
                "request_id",
                std::sync::Arc::new(StringArray::from(vec!["a", "a", "b"])) as ArrayRef,
            ),
            (
                "row",
                std::sync::Arc::new(UInt32Array::from(vec![0, 1, 0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut second_row = label("a", "x");
        second_row.row = 1;
        let mut no_such_row = label("b", "x");
        no_such_row.row = 7;
        let feedback = batch(
            &[label("a", "x"), second_row, no_such_row, label("zzz", "x")],
            1,
        );
        let truth = truth_by_row(&[feedback], true).unwrap();
        assert_eq!(unmatched(&[predictions], &truth).unwrap(), 2);
    }

    /// The same row labelled twice (on two replicas, whose segments are read in name order,
    /// not in time): the label received first counts, in whichever order the batches come.
    #[test]
    fn the_first_label_received_counts() {
        let early = batch(&[label("a", "cat"), label("b", "dog")], 100);
        let late = batch(&[label("a", "dog")], 200);
        for batches in [vec![early.clone(), late.clone()], vec![late, early]] {
            let truth = truth_by_row(&batches, true).unwrap();
            assert_eq!(truth[&("a".to_string(), 0)], Truth::Label("cat".into()));
            assert_eq!(truth[&("b".to_string(), 0)], Truth::Label("dog".into()));
        }
    }
}
