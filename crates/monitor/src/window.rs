//! Live drift windows: one version's rows gathered as feature and output columns until the
//! window closes, by row count or by time. A plain struct fed records; the thread around it
//! decides when to ask. Text values are cut to
//! [`MAX_CATEGORY_BYTES`](crate::category::MAX_CATEGORY_BYTES) as they enter, so a window holds
//! at most that much per categorical value, whatever the requests held.

use std::time::{Duration, Instant};

use crate::column::{Column, Columns, FeatureKind};
use crate::log::{PredictionLayout, RequestRecord};

/// The rows of an open window.
pub struct Window {
    features: Columns,
    outputs: Columns,
    rows: usize,
    /// Text values cut as they came in.
    truncated: u64,
    from_us: i64,
    to_us: i64,
    opened: Instant,
}

/// A closed window's data, ready to compare with the baseline.
pub struct ClosedWindow {
    pub features: Columns,
    pub outputs: Columns,
    pub rows: usize,
    /// Text values cut to [`MAX_CATEGORY_BYTES`](crate::category::MAX_CATEGORY_BYTES) as they
    /// entered the window (for the server to count).
    pub truncated: u64,
    /// Microseconds since the Unix epoch of the first and last request in it.
    pub from_us: i64,
    pub to_us: i64,
}

impl Window {
    pub fn new(layout: &PredictionLayout) -> Window {
        let empty = |kind: FeatureKind| match kind {
            FeatureKind::Numeric => Column::Numeric(Vec::new()),
            FeatureKind::Categorical => Column::Categorical(Vec::new()),
        };
        Window {
            features: layout
                .features()
                .map(|c| (c.name.clone(), empty(c.kind)))
                .collect(),
            outputs: layout
                .outputs()
                .map(|c| (c.name.clone(), empty(c.kind)))
                .collect(),
            rows: 0,
            truncated: 0,
            from_us: 0,
            to_us: 0,
            opened: Instant::now(),
        }
    }

    /// Adds every row of `record` (laid out by `layout`, the one the window was made for).
    pub fn push(&mut self, layout: &PredictionLayout, record: &RequestRecord) {
        if self.rows == 0 {
            self.from_us = record.time_us;
            self.opened = Instant::now();
        }
        self.to_us = self.to_us.max(record.time_us);
        for row in 0..record.rows {
            let (mut f, mut o) = (self.features.iter_mut(), self.outputs.iter_mut());
            for column in &layout.columns {
                let target = if column.is_input() {
                    f.next()
                } else {
                    o.next()
                };
                if let Some((_, values)) = target {
                    let cut = PredictionLayout::value(column, record, row).push_into(values);
                    self.truncated += u64::from(cut);
                }
            }
        }
        self.rows += record.rows;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the window has `rows` rows, or has been open `seconds` (when not 0) with at least
    /// one row.
    pub fn due(&self, rows: u64, seconds: u64) -> bool {
        self.rows as u64 >= rows
            || (seconds > 0
                && self.rows > 0
                && self.opened.elapsed() >= Duration::from_secs(seconds))
    }

    /// Closes the window; it starts empty again.
    pub fn take(&mut self) -> ClosedWindow {
        let clear = |columns: &mut Columns| -> Columns {
            columns
                .iter_mut()
                .map(|(name, c)| {
                    // The next window is likely as long: sized once, not grown row by row.
                    let empty = match c {
                        Column::Numeric(v) => Column::Numeric(Vec::with_capacity(v.len())),
                        Column::Categorical(v) => Column::Categorical(Vec::with_capacity(v.len())),
                    };
                    (name.clone(), std::mem::replace(c, empty))
                })
                .collect()
        };
        let closed = ClosedWindow {
            features: clear(&mut self.features),
            outputs: clear(&mut self.outputs),
            rows: self.rows,
            truncated: std::mem::take(&mut self.truncated),
            from_us: self.from_us,
            to_us: self.to_us,
        };
        self.rows = 0;
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::category::{MAX_CATEGORY_BYTES, TRUNCATION_MARK};
    use crate::log::{derive_layout, Arm, LayoutRequest, TensorInfo, Value};
    use cairn_core::tensor::DataType;

    #[test]
    fn long_texts_enter_a_window_cut_and_counted() {
        let inputs = [TensorInfo {
            name: "text".into(),
            dtype: DataType::Bytes,
            per_row: Some(1),
        }];
        let (layout, _) = derive_layout(&inputs, &[], &LayoutRequest::default()).unwrap();
        let mut window = Window::new(&layout);
        let long = "é".repeat(MAX_CATEGORY_BYTES);
        let record = RequestRecord {
            id: "r".into(),
            time_us: 1,
            version: 1,
            arm: Arm::Stable,
            latency_us: 1,
            status: "ok",
            rows: 3,
            values: vec![
                Value::Text(long.clone()),
                Value::Text("short".into()),
                Value::Text(long),
            ],
        };
        window.push(&layout, &record);
        let closed = window.take();
        assert_eq!(closed.truncated, 2);
        let Column::Categorical(values) = &closed.features[0].1 else {
            panic!("a BYTES input is categorical");
        };
        let cut = values[0].as_deref().unwrap();
        assert!(cut.len() <= MAX_CATEGORY_BYTES && cut.ends_with(TRUNCATION_MARK));
        assert_eq!(values[1].as_deref(), Some("short"));
        assert_eq!(
            window.take().truncated,
            0,
            "counted once, by the window it entered"
        );
    }
}
