//! Reading columns from files, for baselines and offline drift reports: CSV, Parquet, and a
//! model's prediction log.
//!
//! CSV: the first line is the header; an empty field is a missing value; every column is a
//! feature, numeric when every non-empty value parses as a number, else categorical (or when
//! named in `categorical`). Parquet: integer, float and boolean columns are numeric (nulls are
//! missing), string columns categorical. In all three, a column named `output.<name>` is an
//! output (prediction drift), and the log's own columns (`request_id`, `time`, ...) are not
//! features.

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType as ArrowType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::column::{Column, Columns};
use crate::log::{read_dir, META_COLUMNS};

/// A table of columns read from a file.
#[derive(Debug, Default)]
pub struct Table {
    pub features: Columns,
    pub outputs: Columns,
    pub rows: usize,
}

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Log(#[from] crate::log::LogError),
}

/// Which rows of a prediction log to read.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFilter {
    /// Microseconds since the Unix epoch, inclusive.
    pub from_us: Option<i64>,
    /// Exclusive.
    pub to_us: Option<i64>,
    pub version: Option<u64>,
    /// Also rows of shadow copies (off by default: a shadow's outputs never reached a caller).
    pub shadow: bool,
}

/// Reads a CSV (`.csv`) or Parquet (`.parquet`) file, or a prediction log directory.
pub fn read(
    path: &Path,
    categorical: &[String],
    filter: &LogFilter,
) -> Result<Table, DatasetError> {
    if path.is_dir() {
        return read_log(path, categorical, filter);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path, categorical),
        _ => read_csv(path, categorical),
    }
}

/// A CSV file under the rules above.
pub fn read_csv(path: &Path, categorical: &[String]) -> Result<Table, DatasetError> {
    let fail = |reason: String| DatasetError::Read {
        path: path.display().to_string(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_path(path)
        .map_err(|e| fail(e.to_string()))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| fail(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut raw: Vec<Vec<Option<String>>> = vec![Vec::new(); headers.len()];
    let mut rows = 0;
    for record in reader.records() {
        let record = record.map_err(|e| fail(e.to_string()))?;
        for (i, field) in record.iter().enumerate() {
            let field = field.trim();
            raw[i].push((!field.is_empty()).then(|| field.to_string()));
        }
        rows += 1;
    }
    let mut table = Table {
        rows,
        ..Table::default()
    };
    for (name, values) in headers.into_iter().zip(raw) {
        let numeric = !categorical.contains(&name)
            && values.iter().flatten().all(|v| v.parse::<f64>().is_ok());
        let column = if numeric {
            Column::Numeric(
                values
                    .iter()
                    .map(|v| {
                        v.as_ref()
                            .map_or(f64::NAN, |v| v.parse().unwrap_or(f64::NAN))
                    })
                    .collect(),
            )
        } else {
            Column::Categorical(values)
        };
        table.push(name, column);
    }
    Ok(table)
}

/// A Parquet file under the rules above.
pub fn read_parquet(path: &Path, categorical: &[String]) -> Result<Table, DatasetError> {
    let fail = |reason: String| DatasetError::Read {
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| fail(e.to_string()))?
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    Ok(from_batches(
        &batches,
        categorical,
        &LogFilter::default(),
        false,
    ))
}

/// A prediction log directory: `<log>/<model>`, or its `predictions` directory.
pub fn read_log(
    dir: &Path,
    categorical: &[String],
    filter: &LogFilter,
) -> Result<Table, DatasetError> {
    let dir = if dir.join("predictions").is_dir() {
        dir.join("predictions")
    } else {
        dir.to_path_buf()
    };
    let (batches, _) = read_dir(&dir)?;
    Ok(from_batches(&batches, categorical, filter, true))
}

fn from_batches(
    batches: &[RecordBatch],
    categorical: &[String],
    filter: &LogFilter,
    is_log: bool,
) -> Table {
    // Every column in first-seen order; split into features and outputs at the end.
    let mut all: Columns = Vec::new();
    let mut rows = 0;
    for batch in batches {
        let keep = rows_kept(batch, filter, is_log);
        let schema = batch.schema();
        for (i, field) in schema.fields().iter().enumerate() {
            let name = field.name();
            if is_log && META_COLUMNS.contains(&name.as_str()) {
                continue;
            }
            let position = match all.iter().position(|(n, _)| n == name) {
                Some(p) => p,
                None => {
                    let column = if is_categorical(field.data_type(), name, categorical) {
                        Column::Categorical(vec![None; rows])
                    } else {
                        Column::Numeric(vec![f64::NAN; rows])
                    };
                    all.push((name.clone(), column));
                    all.len() - 1
                }
            };
            append(&mut all[position].1, batch.column(i).as_ref(), &keep);
        }
        rows += keep.iter().filter(|k| **k).count();
        // Columns this batch lacks get missing values for its rows.
        for (_, column) in &mut all {
            while column.len() < rows {
                match column {
                    Column::Numeric(v) => v.push(f64::NAN),
                    Column::Categorical(v) => v.push(None),
                }
            }
        }
    }
    let mut table = Table {
        rows,
        ..Table::default()
    };
    for (name, column) in all {
        table.push(name, column);
    }
    table
}

fn is_categorical(t: &ArrowType, name: &str, categorical: &[String]) -> bool {
    categorical.iter().any(|c| c == name)
        || matches!(
            t,
            ArrowType::Utf8
                | ArrowType::LargeUtf8
                | ArrowType::Utf8View
                | ArrowType::Dictionary(..)
        )
        || (name.starts_with("output.") && matches!(t, ArrowType::Int64 | ArrowType::Int32))
}

/// Which rows of a batch pass the filter (every row, for a plain table).
fn rows_kept(batch: &RecordBatch, filter: &LogFilter, is_log: bool) -> Vec<bool> {
    let n = batch.num_rows();
    if !is_log {
        return vec![true; n];
    }
    let time = batch.column_by_name("time").and_then(|c| {
        c.as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
    });
    let version = batch
        .column_by_name("model_version")
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::UInt64Array>());
    let arm = batch
        .column_by_name("arm")
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>());
    let status = batch
        .column_by_name("status")
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>());
    (0..n)
        .map(|i| {
            let t = time.map(|t| t.value(i));
            filter.from_us.is_none_or(|f| t.is_some_and(|t| t >= f))
                && filter.to_us.is_none_or(|to| t.is_some_and(|t| t < to))
                && filter
                    .version
                    .is_none_or(|v| version.is_some_and(|c| c.value(i) == v))
                && (filter.shadow || arm.is_none_or(|a| a.value(i) != "shadow"))
                && status.is_none_or(|s| s.value(i) == "ok")
        })
        .collect()
}

fn append(column: &mut Column, array: &dyn Array, keep: &[bool]) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    macro_rules! numbers {
        ($t:ty) => {{
            let a = array.as_primitive::<$t>();
            for i in (0..a.len()).filter(|&i| keep[i]) {
                let v = (!a.is_null(i)).then(|| a.value(i) as f64);
                push(column, v, || v.map(|v| format_number(v)));
            }
        }};
    }
    match array.data_type() {
        ArrowType::Float64 => numbers!(Float64Type),
        ArrowType::Float32 => numbers!(Float32Type),
        ArrowType::Int64 => numbers!(Int64Type),
        ArrowType::Int32 => numbers!(Int32Type),
        ArrowType::Int16 => numbers!(Int16Type),
        ArrowType::Int8 => numbers!(Int8Type),
        ArrowType::UInt64 => numbers!(UInt64Type),
        ArrowType::UInt32 => numbers!(UInt32Type),
        ArrowType::UInt16 => numbers!(UInt16Type),
        ArrowType::UInt8 => numbers!(UInt8Type),
        ArrowType::Boolean => {
            let a = array.as_boolean();
            for i in (0..a.len()).filter(|&i| keep[i]) {
                let v = (!a.is_null(i)).then(|| a.value(i) as u8 as f64);
                push(column, v, || v.map(format_number));
            }
        }
        ArrowType::Utf8 => {
            let a = array.as_string::<i32>();
            for i in (0..a.len()).filter(|&i| keep[i]) {
                let s = (!a.is_null(i)).then(|| a.value(i).to_string());
                push_text(column, s);
            }
        }
        ArrowType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            for i in (0..a.len()).filter(|&i| keep[i]) {
                let s = (!a.is_null(i)).then(|| a.value(i).to_string());
                push_text(column, s);
            }
        }
        _ => {
            for _ in keep.iter().filter(|k| **k) {
                push_text(column, None);
            }
        }
    }
}

fn push(column: &mut Column, number: Option<f64>, text: impl FnOnce() -> Option<String>) {
    match column {
        Column::Numeric(v) => v.push(number.unwrap_or(f64::NAN)),
        Column::Categorical(v) => v.push(text()),
    }
}

fn push_text(column: &mut Column, text: Option<String>) {
    match column {
        Column::Numeric(v) => v.push(text.and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN)),
        Column::Categorical(v) => v.push(text),
    }
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Table {
    fn push(&mut self, name: String, column: Column) {
        if name.starts_with("output.") {
            self.outputs.push((name, column));
        } else {
            self.features.push((name, column));
        }
    }
}
