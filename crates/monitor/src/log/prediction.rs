//! Prediction records and their Arrow layout: one row per row of a request, with the request's
//! id, time, version, arm, latency and status, then one column per logged input feature and per
//! output element.
//!
//! The request path reads the logged values out of its tensors into a [`RequestRecord`]: one
//! buffer, made and filled on the request's thread and freed on the writer's. Holding the
//! tensors instead (shared buffers, no copy) cost more than the copy: half a dozen small
//! allocations per request (tensor lists, shapes, shared-buffer headers) freed on another
//! thread, which glibc's allocator serves with its arena locks.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};

use crate::category;
use crate::column::{Column, FeatureKind};
use cairn_core::tensor::{DataType, Tensor, TensorData};

/// The columns every record has, before its features and outputs.
pub const META_COLUMNS: [&str; 7] = [
    "request_id",
    "row",
    "time",
    "model_version",
    "arm",
    "latency_us",
    "status",
];

/// Which side of a deployment answered (or, for a shadow, ran a copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// The request named its version.
    Direct,
    Stable,
    Canary,
    /// A shadow candidate's copy: its outputs never reached the caller.
    Shadow,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Stable => "stable",
            Arm::Canary => "canary",
            Arm::Shadow => "shadow",
        }
    }
}

/// How a request ended: `ok`, or the failure reason label (`backend`, `timeout`, ...).
pub type Status = &'static str;

/// One request, as the request path hands it to the log.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// The request's id. A `String` the request path fills in a reused buffer: the record is
    /// dropped on the writer's thread, and a fresh allocation per request freed there was the
    /// allocator's largest cost on the request path.
    pub id: String,
    /// Microseconds since the Unix epoch, when the request arrived.
    pub time_us: i64,
    pub version: u64,
    pub arm: Arm,
    pub latency_us: u64,
    pub status: Status,
    pub rows: usize,
    /// The logged values, row by row, one per column of the version's layout (from
    /// [`PredictionLayout::input_values`] and [`PredictionLayout::fill_outputs`]); outputs are
    /// missing when the request failed.
    pub values: Vec<Value>,
}

impl RequestRecord {
    /// Bytes the record holds (what the log's queue budget counts).
    pub fn data_bytes(&self) -> usize {
        self.id.len()
            + self.values.len() * std::mem::size_of::<Value>()
            + self
                .values
                .iter()
                .map(|v| match v {
                    Value::Text(t) => t.len(),
                    _ => 0,
                })
                .sum::<usize>()
    }
}

/// How a logged value is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Float64,
    Int64,
    Utf8,
}

/// Where a column's values come from: element `offset` of each row of tensor `tensor`, whose
/// rows hold `per_row` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnSource {
    Input {
        tensor: usize,
        offset: usize,
        per_row: usize,
    },
    Output {
        tensor: usize,
        offset: usize,
        per_row: usize,
    },
}

/// One logged column.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedColumn {
    pub name: String,
    pub storage: ValueKind,
    /// How drift compares it.
    pub kind: FeatureKind,
    pub source: ColumnSource,
    /// Its place in the layout (set by [`PredictionLayout::new`]): where a record keeps its
    /// values.
    pub position: usize,
}

impl LoggedColumn {
    pub fn is_input(&self) -> bool {
        matches!(self.source, ColumnSource::Input { .. })
    }
}

/// A model's logged columns and the Arrow schema they make.
#[derive(Clone, Debug)]
pub struct PredictionLayout {
    pub columns: Vec<LoggedColumn>,
    schema: SchemaRef,
}

impl PredictionLayout {
    pub fn new(mut columns: Vec<LoggedColumn>) -> PredictionLayout {
        for (i, c) in columns.iter_mut().enumerate() {
            c.position = i;
        }
        let mut fields = vec![
            Field::new("request_id", ArrowType::Utf8, false),
            Field::new("row", ArrowType::UInt32, false),
            Field::new(
                "time",
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("model_version", ArrowType::UInt64, false),
            Field::new("arm", ArrowType::Utf8, false),
            Field::new("latency_us", ArrowType::UInt64, false),
            Field::new("status", ArrowType::Utf8, false),
        ];
        for c in &columns {
            let t = match c.storage {
                ValueKind::Float64 => ArrowType::Float64,
                ValueKind::Int64 => ArrowType::Int64,
                ValueKind::Utf8 => ArrowType::Utf8,
            };
            fields.push(Field::new(&c.name, t, true));
        }
        PredictionLayout {
            schema: Arc::new(Schema::new(fields)),
            columns,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The input-feature columns.
    pub fn features(&self) -> impl Iterator<Item = &LoggedColumn> {
        self.columns.iter().filter(|c| c.is_input())
    }

    /// The output columns.
    pub fn outputs(&self) -> impl Iterator<Item = &LoggedColumn> {
        self.columns.iter().filter(|c| !c.is_input())
    }

    /// Bytes the values of a request of `rows` rows take, before any text (checked against
    /// the log's budget before they are read out).
    pub fn values_bytes(&self, rows: usize) -> usize {
        rows.saturating_mul(self.columns.len())
            .saturating_mul(std::mem::size_of::<Value>())
    }

    /// A request's logged values with its inputs read out (`inputs` in the model's input
    /// order) and its outputs missing, until [`fill_outputs`](Self::fill_outputs).
    pub fn input_values(&self, inputs: &[Tensor], rows: usize) -> Vec<Value> {
        let mut values = Vec::new();
        self.input_values_into(&mut values, inputs, rows);
        values
    }

    /// [`input_values`](Self::input_values) into `values` (emptied first), reusing its
    /// allocation.
    pub fn input_values_into(&self, values: &mut Vec<Value>, inputs: &[Tensor], rows: usize) {
        values.clear();
        values.resize(rows * self.columns.len(), Value::Missing);
        self.fill(values, rows, |source| match source {
            ColumnSource::Input {
                tensor,
                offset,
                per_row,
            } => Some((inputs.get(tensor), offset, per_row)),
            ColumnSource::Output { .. } => None,
        });
    }

    /// Reads the outputs into `values` (from [`input_values`](Self::input_values)); `output`
    /// gives the served outputs by their place in the version's output order.
    pub fn fill_outputs<'a>(
        &self,
        values: &mut [Value],
        rows: usize,
        output: impl Fn(usize) -> Option<&'a Tensor>,
    ) {
        self.fill(values, rows, |source| match source {
            ColumnSource::Output {
                tensor,
                offset,
                per_row,
            } => Some((output(tensor), offset, per_row)),
            ColumnSource::Input { .. } => None,
        });
    }

    fn fill<'a>(
        &self,
        values: &mut [Value],
        rows: usize,
        source: impl Fn(ColumnSource) -> Option<(Option<&'a Tensor>, usize, usize)>,
    ) {
        let width = self.columns.len();
        if width == 0 || values.len() < rows * width {
            return;
        }
        for column in &self.columns {
            let Some((tensor, offset, per_row)) = source(column.source) else {
                continue;
            };
            let Some(t) = tensor else { continue };
            for row in 0..rows {
                values[row * width + column.position] = element(t, row * per_row + offset);
            }
        }
    }

    /// The value of `column` in row `row` of `record`, as drift sees it.
    pub fn value<'r>(column: &LoggedColumn, record: &'r RequestRecord, row: usize) -> &'r Value {
        static MISSING: Value = Value::Missing;
        let width = record.values.len().checked_div(record.rows).unwrap_or(0);
        record
            .values
            .get(row * width + column.position)
            .filter(|_| column.position < width)
            .unwrap_or(&MISSING)
    }
}

/// One logged value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Integer(i64),
    Text(String),
    Missing,
}

impl Value {
    /// As a drift column value: a number (NaN when missing) or a category, cut to
    /// [`category::MAX_CATEGORY_BYTES`]. Returns whether a text was cut: drift keeps only its
    /// first bytes, whatever the client sent (the log keeps it whole).
    pub fn push_into(&self, column: &mut Column) -> bool {
        match (column, self) {
            (Column::Numeric(v), Value::Number(x)) => v.push(*x),
            (Column::Numeric(v), Value::Integer(x)) => v.push(*x as f64),
            (Column::Numeric(v), _) => v.push(f64::NAN),
            (Column::Categorical(v), Value::Text(s)) => {
                let category = category::bounded(s);
                let cut = matches!(category, Cow::Owned(_));
                v.push(Some(category.into_owned()));
                return cut;
            }
            (Column::Categorical(v), Value::Integer(x)) => v.push(Some(x.to_string())),
            (Column::Categorical(v), Value::Number(x)) if x.is_finite() => {
                v.push(Some(format_number(*x)))
            }
            (Column::Categorical(v), _) => v.push(None),
        }
        false
    }
}

/// A category made from a number: integers without a fraction, as a label reads.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Element `i` of a tensor (row-major), or `Missing` past its end.
fn element(t: &Tensor, i: usize) -> Value {
    let fixed = |size: usize| match &t.data {
        TensorData::Fixed(b) => b.get(i * size..(i + 1) * size),
        TensorData::Bytes(_) => None,
    };
    macro_rules! read {
        ($ty:ty, $wrap:expr) => {
            match fixed(std::mem::size_of::<$ty>()) {
                Some(bytes) => {
                    let v = <$ty>::from_le_bytes(bytes.try_into().expect("sliced to the size"));
                    $wrap(v)
                }
                None => Value::Missing,
            }
        };
    }
    match t.dtype {
        DataType::Fp32 => read!(f32, |v: f32| Value::Number(v as f64)),
        DataType::Fp64 => read!(f64, Value::Number),
        DataType::Fp16 => read!(u16, |v: u16| Value::Number(f16_to_f64(v))),
        DataType::Bf16 => read!(u16, |v: u16| Value::Number(
            f32::from_bits((v as u32) << 16) as f64
        )),
        DataType::Int8 => read!(i8, |v: i8| Value::Integer(v as i64)),
        DataType::Int16 => read!(i16, |v: i16| Value::Integer(v as i64)),
        DataType::Int32 => read!(i32, |v: i32| Value::Integer(v as i64)),
        DataType::Int64 => read!(i64, Value::Integer),
        DataType::Uint8 => read!(u8, |v: u8| Value::Integer(v as i64)),
        DataType::Uint16 => read!(u16, |v: u16| Value::Integer(v as i64)),
        DataType::Uint32 => read!(u32, |v: u32| Value::Integer(v as i64)),
        DataType::Uint64 => read!(u64, |v: u64| Value::Integer(v as i64)),
        DataType::Bool => read!(u8, |v: u8| Value::Integer((v != 0) as i64)),
        DataType::Bytes => match &t.data {
            TensorData::Bytes(items) => items.get(i).map_or(Value::Missing, |b| {
                Value::Text(String::from_utf8_lossy(b).into_owned())
            }),
            TensorData::Fixed(_) => Value::Missing,
        },
    }
}

/// IEEE half precision to f64.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Rows gathered for one batch of the log.
pub struct PredictionBatch {
    layout: PredictionLayout,
    request_id: StringBuilder,
    row: UInt32Builder,
    time: TimestampMicrosecondBuilder,
    version: UInt64Builder,
    arm: StringBuilder,
    latency: UInt64Builder,
    status: StringBuilder,
    values: Vec<ValueBuilder>,
    rows: usize,
}

enum ValueBuilder {
    Float(Float64Builder),
    Int(Int64Builder),
    Text(StringBuilder),
}

impl PredictionBatch {
    pub fn new(layout: PredictionLayout) -> PredictionBatch {
        let values = layout
            .columns
            .iter()
            .map(|c| match c.storage {
                ValueKind::Float64 => ValueBuilder::Float(Float64Builder::new()),
                ValueKind::Int64 => ValueBuilder::Int(Int64Builder::new()),
                ValueKind::Utf8 => ValueBuilder::Text(StringBuilder::new()),
            })
            .collect();
        PredictionBatch {
            layout,
            request_id: StringBuilder::new(),
            row: UInt32Builder::new(),
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            version: UInt64Builder::new(),
            arm: StringBuilder::new(),
            latency: UInt64Builder::new(),
            status: StringBuilder::new(),
            values,
            rows: 0,
        }
    }

    pub fn layout(&self) -> &PredictionLayout {
        &self.layout
    }

    /// Rows gathered so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one row per row of the request.
    pub fn push(&mut self, record: &RequestRecord) {
        for r in 0..record.rows {
            self.request_id.append_value(&record.id);
            self.row.append_value(r as u32);
            self.time.append_value(record.time_us);
            self.version.append_value(record.version);
            self.arm.append_value(record.arm.as_str());
            self.latency.append_value(record.latency_us);
            self.status.append_value(record.status);
            for (column, builder) in self.layout.columns.iter().zip(&mut self.values) {
                match (PredictionLayout::value(column, record, r), builder) {
                    (Value::Number(x), ValueBuilder::Float(b)) => b.append_value(*x),
                    (Value::Integer(x), ValueBuilder::Float(b)) => b.append_value(*x as f64),
                    (Value::Integer(x), ValueBuilder::Int(b)) => b.append_value(*x),
                    (Value::Number(x), ValueBuilder::Int(b)) => b.append_value(*x as i64),
                    (Value::Text(s), ValueBuilder::Text(b)) => b.append_value(s),
                    (Value::Integer(x), ValueBuilder::Text(b)) => b.append_value(x.to_string()),
                    (Value::Number(x), ValueBuilder::Text(b)) => b.append_value(format_number(*x)),
                    (_, ValueBuilder::Float(b)) => b.append_null(),
                    (_, ValueBuilder::Int(b)) => b.append_null(),
                    (_, ValueBuilder::Text(b)) => b.append_null(),
                }
            }
            self.rows += 1;
        }
    }

    /// The rows gathered as one record batch; the builder starts empty again.
    pub fn finish(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.request_id.finish()),
            Arc::new(self.row.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.arm.finish()),
            Arc::new(self.latency.finish()),
            Arc::new(self.status.finish()),
        ];
        for b in &mut self.values {
            arrays.push(match b {
                ValueBuilder::Float(b) => Arc::new(b.finish()),
                ValueBuilder::Int(b) => Arc::new(b.finish()),
                ValueBuilder::Text(b) => Arc::new(b.finish()),
            });
        }
        self.rows = 0;
        Some(
            RecordBatch::try_new(Arc::clone(self.layout.schema()), arrays)
                .expect("the builders follow the layout's schema"),
        )
    }
}

/// What the layout needs to know of one of a model's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DataType,
    /// Elements per row; `None` when a dimension is variable (such a tensor is not logged).
    pub per_row: Option<usize>,
}

/// What `[monitoring]` asks for, as the layout needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayoutRequest<'a> {
    /// Inputs to log; empty: all.
    pub inputs: &'a [String],
    /// Outputs to log; empty: all.
    pub outputs: &'a [String],
    /// Names for the input features in order; empty: derived.
    pub features: &'a [String],
    /// Features compared as categories.
    pub categorical: &'a [String],
}

/// The most columns one model's log may have: an image model's pixels are not features.
pub const MAX_LOGGED_COLUMNS: usize = 4096;

/// Why a layout cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayoutError {
    #[error("monitoring.{key}: '{name}' is not one of the model's {what} ({known})")]
    Unknown {
        key: &'static str,
        name: String,
        what: &'static str,
        known: String,
    },
    #[error("monitoring.features names {given} features, but the logged inputs hold {actual}")]
    FeatureCount { given: usize, actual: usize },
    #[error("monitoring.categorical: '{0}' is not a feature")]
    UnknownCategorical(String),
}

/// Derives a model's logged columns: one per element of a row of each logged input (named by
/// `features`, else `<input>` for a one-column input and `<input>[i]` otherwise), then one per
/// element of each logged output (`output.<name>` or `output.<name>[k]`). BYTES inputs and the
/// `categorical` features are categories; integer and string outputs (labels) are categories,
/// float outputs numbers. Tensors with a variable per-row size, and columns beyond
/// [`MAX_LOGGED_COLUMNS`], are left out (the returned notes say which).
pub fn derive_layout(
    inputs: &[TensorInfo],
    outputs: &[TensorInfo],
    request: &LayoutRequest<'_>,
) -> Result<(PredictionLayout, Vec<String>), LayoutError> {
    let mut notes = Vec::new();
    let mut columns = input_columns(inputs, request, &mut notes)?;
    for i in pick_tensors(outputs, request.outputs, "outputs", "outputs")? {
        let t = &outputs[i];
        let Some(per_row) = t.per_row else {
            notes.push(format!(
                "output '{}' has a variable size per row; not logged",
                t.name
            ));
            continue;
        };
        let (storage, kind) = match t.dtype {
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                (ValueKind::Float64, FeatureKind::Numeric)
            }
            DataType::Bytes => (ValueKind::Utf8, FeatureKind::Categorical),
            _ => (ValueKind::Int64, FeatureKind::Categorical),
        };
        for offset in 0..per_row {
            let name = if per_row == 1 {
                format!("output.{}", t.name)
            } else {
                format!("output.{}[{offset}]", t.name)
            };
            columns.push(LoggedColumn {
                name,
                storage,
                kind,
                source: ColumnSource::Output {
                    tensor: i,
                    offset,
                    per_row,
                },
                position: 0,
            });
        }
    }
    if columns.len() > MAX_LOGGED_COLUMNS {
        notes.push(format!(
            "{} columns, more than the limit of {MAX_LOGGED_COLUMNS}; the rest are not logged",
            columns.len()
        ));
        columns.truncate(MAX_LOGGED_COLUMNS);
    }
    Ok((PredictionLayout::new(columns), notes))
}

/// The indices in `list` of the tensors `wanted` names (all of them when it names none).
fn pick_tensors(
    list: &[TensorInfo],
    wanted: &[String],
    key: &'static str,
    what: &'static str,
) -> Result<Vec<usize>, LayoutError> {
    if wanted.is_empty() {
        return Ok((0..list.len()).collect::<Vec<_>>());
    }
    wanted
        .iter()
        .map(|w| {
            list.iter()
                .position(|t| &t.name == w)
                .ok_or_else(|| LayoutError::Unknown {
                    key,
                    name: w.clone(),
                    what,
                    known: list
                        .iter()
                        .map(|t| format!("'{}'", t.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

/// The input-feature columns, one per element of a row of each logged input. The names
/// `request.features` gives, and its categorical features, are checked against the elements
/// first: a mismatch is an error, not a layout that logs the wrong names.
fn input_columns(
    inputs: &[TensorInfo],
    request: &LayoutRequest<'_>,
    notes: &mut Vec<String>,
) -> Result<Vec<LoggedColumn>, LayoutError> {
    let mut derived = Vec::new();
    for i in pick_tensors(inputs, request.inputs, "inputs", "inputs")? {
        let t = &inputs[i];
        let Some(per_row) = t.per_row else {
            notes.push(format!(
                "input '{}' has a variable size per row; not logged",
                t.name
            ));
            continue;
        };
        for offset in 0..per_row {
            let name = if per_row == 1 {
                t.name.clone()
            } else {
                format!("{}[{offset}]", t.name)
            };
            derived.push((name, t.dtype, i, offset, per_row));
        }
    }
    if !request.features.is_empty() && request.features.len() != derived.len() {
        return Err(LayoutError::FeatureCount {
            given: request.features.len(),
            actual: derived.len(),
        });
    }
    for c in request.categorical {
        let known = if request.features.is_empty() {
            derived.iter().any(|d| &d.0 == c)
        } else {
            request.features.contains(c)
        };
        if !known {
            return Err(LayoutError::UnknownCategorical(c.clone()));
        }
    }
    let mut columns = Vec::new();
    for (k, (derived_name, dtype, tensor, offset, per_row)) in derived.into_iter().enumerate() {
        let mut name = request.features.get(k).cloned().unwrap_or(derived_name);
        let categorical = dtype == DataType::Bytes || request.categorical.contains(&name);
        if META_COLUMNS.contains(&name.as_str()) {
            name = format!("input.{name}");
        }
        columns.push(LoggedColumn {
            name,
            storage: if dtype == DataType::Bytes {
                ValueKind::Utf8
            } else {
                ValueKind::Float64
            },
            kind: if categorical {
                FeatureKind::Categorical
            } else {
                FeatureKind::Numeric
            },
            source: ColumnSource::Input {
                tensor,
                offset,
                per_row,
            },
            position: 0,
        });
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PredictionLayout {
        let inputs = [TensorInfo {
            name: "x".into(),
            dtype: DataType::Fp32,
            per_row: Some(2),
        }];
        let outputs = [
            TensorInfo {
                name: "label".into(),
                dtype: DataType::Int64,
                per_row: Some(1),
            },
            TensorInfo {
                name: "p".into(),
                dtype: DataType::Fp32,
                per_row: Some(2),
            },
        ];
        derive_layout(&inputs, &outputs, &LayoutRequest::default())
            .unwrap()
            .0
    }

    fn record(values: Vec<Value>, rows: usize) -> RequestRecord {
        RequestRecord {
            id: "r".into(),
            time_us: 0,
            version: 1,
            arm: Arm::Stable,
            latency_us: 1,
            status: "ok",
            rows,
            values,
        }
    }

    #[test]
    fn values_are_read_out_row_by_row_in_column_order() {
        let layout = layout();
        let names: Vec<_> = layout.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["x[0]", "x[1]", "output.label", "output.p[0]", "output.p[1]"]
        );
        let x = Tensor::from_values(vec![2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let mut values = layout.input_values(&[x], 2);
        assert_eq!(values.len(), 10);
        // Before the outputs are in (or when the request failed), they are missing.
        let failed = record(values.clone(), 2);
        let label = &layout.columns[2];
        assert_eq!(PredictionLayout::value(label, &failed, 1), &Value::Missing);
        let labels = Tensor::from_values(vec![2], &[0i64, 1]).unwrap();
        let p = Tensor::from_values(vec![2, 2], &[0.9f32, 0.1, 0.25, 0.75]).unwrap();
        let outputs = [labels, p];
        layout.fill_outputs(&mut values, 2, |i| outputs.get(i));
        let r = record(values, 2);
        let at = |c: usize, row: usize| PredictionLayout::value(&layout.columns[c], &r, row);
        assert_eq!(at(0, 0), &Value::Number(1.0));
        assert_eq!(at(1, 1), &Value::Number(4.0));
        assert_eq!(at(2, 1), &Value::Integer(1));
        assert_eq!(at(3, 1), &Value::Number(0.25));
        assert_eq!(at(4, 0), &Value::Number(0.1f32 as f64));
        // Past the record's rows, and in a record of another width: missing, never a panic.
        assert_eq!(at(0, 2), &Value::Missing);
        let narrow = record(vec![Value::Number(1.0)], 1);
        assert_eq!(
            PredictionLayout::value(&layout.columns[4], &narrow, 0),
            &Value::Missing
        );
        assert_eq!(r.data_bytes(), 1 + 10 * std::mem::size_of::<Value>());
        assert_eq!(layout.values_bytes(2) + r.id.len(), r.data_bytes());

        let mut batch = PredictionBatch::new(layout.clone());
        batch.push(&r);
        let rb = batch.finish().unwrap();
        assert_eq!(rb.num_rows(), 2);
        let col = rb
            .column_by_name("output.label")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .clone();
        assert_eq!(col.values().to_vec(), vec![0, 1]);
    }

    #[test]
    fn a_missing_tensor_leaves_its_columns_missing() {
        let layout = layout();
        let values = layout.input_values(&[], 1);
        assert!(values.iter().all(|v| *v == Value::Missing));
    }
}
