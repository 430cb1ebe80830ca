//! Ground truth: feedback items as stored in the log (their own segments, beside the
//! predictions, so the join is a query away offline), and the in-memory index of recent
//! predictions that live feedback is matched against.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// One piece of ground truth for a logged row.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackItem {
    pub id: String,
    pub row: u32,
    /// The true class (classification).
    pub label: Option<String>,
    /// The true value (regression).
    pub target: Option<f64>,
    /// When the truth was observed (microseconds since the Unix epoch), if the caller says.
    pub time_us: Option<i64>,
}

/// The feedback segments' schema: `request_id`, `row`, `label`, `target`, `time`, `received`.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("target", DataType::Float64, true),
        Field::new("time", ts(), true),
        Field::new("received", ts(), false),
    ]))
}

/// Items as one batch of the feedback log.
pub fn batch(items: &[FeedbackItem], received_us: i64) -> RecordBatch {
    let mut id = StringBuilder::new();
    let mut row = UInt32Builder::new();
    let mut label = StringBuilder::new();
    let mut target = Float64Builder::new();
    let mut time = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut received = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for item in items {
        id.append_value(&item.id);
        row.append_value(item.row);
        label.append_option(item.label.as_deref());
        target.append_option(item.target);
        time.append_option(item.time_us);
        received.append_value(received_us);
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(row.finish()),
        Arc::new(label.finish()),
        Arc::new(target.finish()),
        Arc::new(time.finish()),
        Arc::new(received.finish()),
    ];
    RecordBatch::try_new(schema(), arrays).expect("the builders follow the schema")
}

/// What a version predicted for one row, as feedback is compared with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicted {
    pub version: u64,
    /// The predicted class, for classification.
    pub label: Option<String>,
    /// The predicted value, for regression.
    pub value: Option<f64>,
    /// The positive class's score, for ROC AUC.
    pub score: Option<f64>,
}

/// How one feedback item fared.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    Matched(Predicted),
    /// The row already had feedback; the first one counts.
    Duplicate,
    /// No recent prediction has this id and row (too old, never logged, or wrong).
    Unknown,
}

/// The most recent predictions, by request id and row, up to a fixed number of rows.
pub struct PredictionIndex {
    capacity: usize,
    /// Keyed with a fast, per-process seeded hash: ids come from callers, but a flood of
    /// colliding ids can only slow the writer, which sheds records when its queue is full.
    rows: HashMap<(Arc<str>, u32), (Predicted, bool), foldhash::fast::RandomState>,
    order: VecDeque<(Arc<str>, u32)>,
}

impl PredictionIndex {
    pub fn new(capacity: usize) -> PredictionIndex {
        PredictionIndex {
            capacity: capacity.max(1),
            rows: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Remembers a prediction; the oldest goes once the index is full.
    pub fn insert(&mut self, id: &Arc<str>, row: u32, predicted: Predicted) {
        let key = (Arc::clone(id), row);
        if self.rows.insert(key.clone(), (predicted, false)).is_none() {
            self.order.push_back(key);
        }
        while self.rows.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.rows.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Matches one feedback item, marking its row answered.
    pub fn answer(&mut self, id: &str, row: u32) -> Match {
        let key: (Arc<str>, u32) = (Arc::from(id), row);
        match self.rows.get_mut(&key) {
            None => Match::Unknown,
            Some((_, true)) => Match::Duplicate,
            Some((predicted, answered)) => {
                *answered = true;
                Match::Matched(predicted.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: u64) -> Predicted {
        Predicted {
            version: v,
            label: Some("1".into()),
            value: None,
            score: Some(0.7),
        }
    }

    #[test]
    fn matches_once_and_forgets_the_oldest() {
        let mut index = PredictionIndex::new(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        index.insert(&a, 0, p(1));
        index.insert(&b, 0, p(1));
        assert_eq!(index.answer("a", 0), Match::Matched(p(1)));
        assert_eq!(index.answer("a", 0), Match::Duplicate);
        assert_eq!(index.answer("a", 1), Match::Unknown);
        index.insert(&c, 0, p(2));
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.answer("a", 0),
            Match::Unknown,
            "the oldest was forgotten"
        );
        assert_eq!(index.answer("c", 0), Match::Matched(p(2)));
    }

    #[test]
    fn batches_follow_the_schema() {
        let items = vec![FeedbackItem {
            id: "x".into(),
            row: 2,
            label: Some("cat".into()),
            target: None,
            time_us: None,
        }];
        let b = batch(&items, 5);
        assert_eq!(b.schema(), schema());
        assert_eq!(b.num_rows(), 1);
    }
}
