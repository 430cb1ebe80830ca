//! Ground truth: feedback items as stored in the log (their own segments, beside the
//! predictions, so the join is a query away offline), and the in-memory index of recent
//! predictions that live feedback is matched against.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::log::Arm;

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
    /// How the request reached the version (a named version, a deployment's arm).
    pub arm: Arm,
    /// When it was answered, in microseconds since the Unix epoch.
    pub answered_us: i64,
    /// The predicted class, for classification.
    pub label: Option<String>,
    /// The predicted value, for regression.
    pub value: Option<f64>,
    /// The positive class's score, for ROC AUC.
    pub score: Option<f64>,
    /// What a shadow candidate predicted for the same row, when one ran on its copy: the pair
    /// that a paired trial compares on the same ground truth.
    pub shadow: Option<Shadowed>,
}

/// A shadow candidate's prediction for a row the caller got another version's answer to.
#[derive(Clone, Debug, PartialEq)]
pub struct Shadowed {
    pub version: u64,
    pub label: Option<String>,
    pub value: Option<f64>,
}

/// A prediction as it is handed to the index: borrowed, so that remembering a row allocates
/// nothing on the writer thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictionRef<'a> {
    pub version: u64,
    pub arm: Arm,
    pub answered_us: i64,
    pub label: Option<&'a str>,
    pub value: Option<f64>,
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

/// Bytes of ids and labels kept per row of capacity: the index's memory is bounded by its
/// capacity whatever the callers' ids, and a flood of long ids only shortens what it remembers.
pub const TEXT_PER_ROW: usize = 256;

/// The most recent predictions, by request id and row, up to a fixed number of rows.
///
/// Every logged row passes through here on the writer thread, so it is kept flat: rows in a ring
/// (oldest first), their ids and labels in one text buffer (the rows of one request share their
/// id's bytes), and a table of positions in the ring. A map of owned keys cost an allocation
/// and a free per row and was the writer's largest cost after sealing.
pub struct PredictionIndex {
    capacity: usize,
    text_capacity: usize,
    /// Keyed with a fast, per-process seeded hash: ids come from callers, but a flood of
    /// colliding ids can only slow the writer, which sheds records when its queue is full.
    hasher: foldhash::fast::RandomState,
    /// Sequence numbers of the rows in `slots`.
    table: hashbrown::HashTable<u64>,
    slots: VecDeque<Slot>,
    /// The sequence number of `slots[0]`.
    first_seq: u64,
    /// Ids and labels; `text[0]` is at offset `text_base` of everything ever appended.
    text: Vec<u8>,
    text_base: u64,
    /// Where the newest id is, so the next rows of its request can share it.
    last_id: Option<Span>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    len: u32,
}

struct Slot {
    hash: u64,
    id: Span,
    row: u32,
    label: Option<Span>,
    version: u64,
    arm: Arm,
    answered_us: i64,
    value: Option<f64>,
    score: Option<f64>,
    answered: bool,
    /// Whether the caller's prediction is in (a shadow's answer may come first).
    caller: bool,
    shadow: Option<ShadowSlot>,
}

struct ShadowSlot {
    version: u64,
    label: Option<Span>,
    value: Option<f64>,
}

impl PredictionIndex {
    pub fn new(capacity: usize) -> PredictionIndex {
        let capacity = capacity.max(1);
        PredictionIndex {
            capacity,
            text_capacity: capacity.saturating_mul(TEXT_PER_ROW),
            hasher: foldhash::fast::RandomState::default(),
            table: hashbrown::HashTable::new(),
            slots: VecDeque::new(),
            first_seq: 0,
            text: Vec::new(),
            text_base: 0,
            last_id: None,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of ids and labels held.
    #[cfg(test)]
    fn text_bytes(&self) -> usize {
        self.text.len()
    }

    /// Remembers a prediction; the oldest go once the index is full (by rows or by text). A row
    /// already remembered keeps its first prediction (a row only a shadow's answer made room
    /// for takes this one as the caller's).
    pub fn insert(&mut self, id: &str, row: u32, predicted: PredictionRef<'_>) {
        let hash = self.hash(id.as_bytes(), row);
        let at = match self.find(hash, id.as_bytes(), row) {
            Some(seq) => (seq - self.first_seq) as usize,
            None => match self.push(hash, id, row, predicted.label.map_or(0, str::len)) {
                Some(at) => at,
                None => return,
            },
        };
        if self.slots[at].caller {
            return;
        }
        let label = predicted.label.and_then(|l| self.append_within(l));
        let slot = &mut self.slots[at];
        slot.caller = true;
        slot.label = label;
        slot.version = predicted.version;
        slot.arm = predicted.arm;
        slot.answered_us = predicted.answered_us;
        slot.value = predicted.value;
        slot.score = predicted.score;
    }

    /// Attaches a shadow candidate's prediction to the row the caller was answered for. The two
    /// reach the writer in either order (the shadow may finish first), so a shadow's answer to
    /// a row not seen yet takes a row of its own, which the caller's answer then fills. Whether
    /// it was attached: one that arrives after the row's label, twice (the first one counts),
    /// or with no room left stays unpaired.
    pub fn pair(&mut self, id: &str, row: u32, shadow: PredictionRef<'_>) -> bool {
        let hash = self.hash(id.as_bytes(), row);
        let at = match self.find(hash, id.as_bytes(), row) {
            Some(seq) => (seq - self.first_seq) as usize,
            None => match self.push(hash, id, row, shadow.label.map_or(0, str::len)) {
                Some(at) => at,
                None => return false,
            },
        };
        if self.slots[at].answered || self.slots[at].shadow.is_some() {
            return false;
        }
        let label = match shadow.label {
            Some(l) => match self.append_within(l) {
                Some(span) => Some(span),
                None => return false,
            },
            None => None,
        };
        self.slots[at].shadow = Some(ShadowSlot {
            version: shadow.version,
            label,
            value: shadow.value,
        });
        true
    }

    /// A new row for `id`, with room made for its id and `text` more bytes; its index in
    /// `slots`, or `None` when the id alone is beyond what the index may hold.
    fn push(&mut self, hash: u64, id: &str, row: u32, text: usize) -> Option<usize> {
        let shared = self
            .last_id
            .filter(|span| span.start >= self.text_base && self.bytes(*span) == id.as_bytes());
        // Counted with the id even when it is shared: evicting may drop the bytes it shares.
        let needed = text + id.len();
        if needed > self.text_capacity {
            return None;
        }
        while self.slots.len() >= self.capacity
            || (self.text_live() + needed > self.text_capacity && !self.slots.is_empty())
        {
            self.evict_oldest();
        }
        // Evicting may have dropped the shared id's bytes.
        let id_span = match shared.filter(|span| span.start >= self.text_base) {
            Some(span) => span,
            None => {
                let span = self.append(id.as_bytes());
                self.last_id = Some(span);
                span
            }
        };
        let seq = self.first_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            hash,
            id: id_span,
            row,
            label: None,
            version: 0,
            arm: Arm::Direct,
            answered_us: 0,
            value: None,
            score: None,
            answered: false,
            caller: false,
            shadow: None,
        });
        let (slots, first) = (&self.slots, self.first_seq);
        self.table
            .insert_unique(hash, seq, |s| slots[(*s - first) as usize].hash);
        Some(self.slots.len() - 1)
    }

    /// Appends `text` if the live text stays within its bound.
    fn append_within(&mut self, text: &str) -> Option<Span> {
        (self.text_live() + text.len() <= self.text_capacity).then(|| self.append(text.as_bytes()))
    }

    /// Matches one feedback item, marking its row answered.
    pub fn answer(&mut self, id: &str, row: u32) -> Match {
        let hash = self.hash(id.as_bytes(), row);
        let Some(seq) = self.find(hash, id.as_bytes(), row) else {
            return Match::Unknown;
        };
        let at = (seq - self.first_seq) as usize;
        if !self.slots[at].caller {
            return Match::Unknown;
        }
        if self.slots[at].answered {
            return Match::Duplicate;
        }
        self.slots[at].answered = true;
        let slot = &self.slots[at];
        Match::Matched(Predicted {
            version: slot.version,
            arm: slot.arm,
            answered_us: slot.answered_us,
            label: slot
                .label
                .map(|span| String::from_utf8_lossy(self.bytes(span)).into_owned()),
            value: slot.value,
            score: slot.score,
            shadow: slot.shadow.as_ref().map(|s| Shadowed {
                version: s.version,
                label: s
                    .label
                    .map(|span| String::from_utf8_lossy(self.bytes(span)).into_owned()),
                value: s.value,
            }),
        })
    }

    fn hash(&self, id: &[u8], row: u32) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((id, row))
    }

    fn find(&self, hash: u64, id: &[u8], row: u32) -> Option<u64> {
        self.table
            .find(hash, |seq| {
                let slot = &self.slots[(*seq - self.first_seq) as usize];
                slot.row == row && self.bytes(slot.id) == id
            })
            .copied()
    }

    fn bytes(&self, span: Span) -> &[u8] {
        let start = (span.start - self.text_base) as usize;
        &self.text[start..start + span.len as usize]
    }

    fn append(&mut self, bytes: &[u8]) -> Span {
        let span = Span {
            start: self.text_base + self.text.len() as u64,
            len: bytes.len() as u32,
        };
        self.text.extend_from_slice(bytes);
        span
    }

    /// Text still referred to: from the oldest row's id on.
    fn text_live(&self) -> usize {
        self.slots.front().map_or(0, |s| {
            (self.text_base + self.text.len() as u64 - s.id.start) as usize
        })
    }

    fn evict_oldest(&mut self) {
        let Some(slot) = self.slots.pop_front() else {
            return;
        };
        let seq = self.first_seq;
        self.first_seq += 1;
        if let Ok(entry) = self.table.find_entry(slot.hash, |s| *s == seq) {
            entry.remove();
        }
        // Text before the oldest remaining row's id is dead; it is cut once it outweighs what
        // lives, so each byte is moved at most once on average.
        let live_from = match self.slots.front() {
            Some(s) => s.id.start,
            None => {
                self.last_id = None;
                self.text_base + self.text.len() as u64
            }
        };
        let dead = (live_from - self.text_base) as usize;
        if dead > 0 && dead >= self.text.len() - dead {
            self.text.drain(..dead);
            self.text_base = live_from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn p(v: u64) -> PredictionRef<'static> {
        PredictionRef {
            version: v,
            arm: Arm::Stable,
            answered_us: 1,
            label: Some("1"),
            value: None,
            score: Some(0.7),
        }
    }

    fn owned(p: PredictionRef<'_>) -> Predicted {
        Predicted {
            version: p.version,
            arm: p.arm,
            answered_us: p.answered_us,
            label: p.label.map(str::to_string),
            value: p.value,
            score: p.score,
            shadow: None,
        }
    }

    /// A shadow's answer pairs with the caller's answer for the same row, once, and only while
    /// that row is remembered and unanswered.
    #[test]
    fn a_shadow_answer_pairs_with_the_row_once() {
        let mut index = PredictionIndex::new(4);
        let shadow = |label| PredictionRef {
            version: 2,
            arm: Arm::Shadow,
            answered_us: 2,
            label: Some(label),
            value: None,
            score: None,
        };
        // The shadow's answer first: it waits for the caller's, which feedback needs.
        assert!(index.pair("a", 0, shadow("0")));
        assert_eq!(
            index.answer("a", 0),
            Match::Unknown,
            "no caller's answer yet"
        );
        index.insert("a", 0, p(1));
        assert!(
            !index.pair("a", 0, shadow("1")),
            "the first shadow answer counts"
        );
        let Match::Matched(got) = index.answer("a", 0) else {
            panic!("the row is there");
        };
        assert_eq!(
            got.shadow,
            Some(Shadowed {
                version: 2,
                label: Some("0".into()),
                value: None
            })
        );
        assert_eq!(got.label.as_deref(), Some("1"));
        index.insert("b", 0, p(1));
        assert!(index.pair("b", 0, shadow("0")), "the caller's answer first");
        index.insert("c", 0, p(1));
        index.answer("c", 0);
        assert!(
            !index.pair("c", 0, shadow("0")),
            "too late: already answered"
        );
    }

    #[test]
    fn matches_once_and_forgets_the_oldest() {
        let mut index = PredictionIndex::new(2);
        index.insert("a", 0, p(1));
        index.insert("b", 0, p(1));
        assert_eq!(index.answer("a", 0), Match::Matched(owned(p(1))));
        assert_eq!(index.answer("a", 0), Match::Duplicate);
        assert_eq!(index.answer("a", 1), Match::Unknown);
        index.insert("c", 0, p(2));
        assert_eq!(index.len(), 2);
        assert_eq!(
            index.answer("a", 0),
            Match::Unknown,
            "the oldest was forgotten"
        );
        assert_eq!(index.answer("c", 0), Match::Matched(owned(p(2))));
    }

    #[test]
    fn a_row_inserted_twice_keeps_its_first_prediction() {
        let mut index = PredictionIndex::new(4);
        index.insert("a", 0, p(1));
        index.insert("a", 0, p(2));
        assert_eq!(index.len(), 1);
        assert_eq!(index.answer("a", 0), Match::Matched(owned(p(1))));
    }

    /// Requests of several rows, ids of every length, labels or none, and far more rows than
    /// the index holds: whatever it answers is what a plain map of the newest rows says.
    #[test]
    fn agrees_with_a_map_of_the_newest_rows() {
        let capacity = 50;
        let mut index = PredictionIndex::new(capacity);
        let mut order: VecDeque<(String, u32)> = VecDeque::new();
        let mut model: HashMap<(String, u32), (Predicted, bool)> = HashMap::new();
        let labels = ["cat", "dog", "a-much-longer-label"];
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        for request in 0..2_000u64 {
            let id = format!("{request}-{}", "x".repeat((next() % 40) as usize));
            let rows = 1 + next() % 5;
            for row in 0..rows as u32 {
                let label = (next() % 4 != 0).then(|| labels[(next() % 3) as usize]);
                let predicted = PredictionRef {
                    version: request % 3,
                    arm: Arm::Canary,
                    answered_us: request as i64,
                    label,
                    value: Some(row as f64),
                    score: (next() % 2 == 0).then_some(0.25),
                };
                index.insert(&id, row, predicted);
                order.push_back((id.clone(), row));
                model.insert((id.clone(), row), (owned(predicted), false));
                while order.len() > capacity {
                    let old = order.pop_front().unwrap();
                    model.remove(&old);
                }
            }
            assert_eq!(index.len(), model.len());
            // Ask about a recent row, a forgotten one and one never seen.
            for back in [next() % 60, 0] {
                let asked = request.saturating_sub(back);
                let key = (format!("{asked}-"), (next() % 5) as u32);
                let found = model
                    .keys()
                    .find(|(id, row)| id.starts_with(&key.0) && *row == key.1)
                    .cloned();
                match found {
                    Some(key) => {
                        let (predicted, answered) = model.get_mut(&key).unwrap();
                        let want = if *answered {
                            Match::Duplicate
                        } else {
                            Match::Matched(predicted.clone())
                        };
                        *answered = true;
                        assert_eq!(index.answer(&key.0, key.1), want, "{key:?}");
                    }
                    None => {
                        assert_eq!(index.answer(&key.0, key.1), Match::Unknown);
                    }
                }
            }
            assert!(index.text_bytes() <= 2 * capacity * TEXT_PER_ROW);
        }
    }

    #[test]
    fn long_ids_bound_the_bytes_kept() {
        let capacity = 8;
        let mut index = PredictionIndex::new(capacity);
        let long = "y".repeat(TEXT_PER_ROW * 3);
        for i in 0..100 {
            let id = format!("{i}{long}");
            index.insert(&id, 0, p(1));
            assert!(index.text_live() <= capacity * TEXT_PER_ROW);
            assert!(index.text_bytes() <= 2 * capacity * TEXT_PER_ROW);
            assert_eq!(index.answer(&id, 0), Match::Matched(owned(p(1))));
        }
        assert!(index.len() < capacity, "long ids leave room for fewer rows");
        let too_long = "z".repeat(capacity * TEXT_PER_ROW + 1);
        index.insert(&too_long, 0, p(1));
        assert_eq!(index.answer(&too_long, 0), Match::Unknown);
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
