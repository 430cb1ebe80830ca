//! The prediction log in an object store (`log_store`): where every replica's sealed segments
//! go, and how readers find them again.
//!
//! Layout, Hive-partitioned so that other engines prune by model and day:
//!
//! ```text
//! <prefix>/<model>/predictions/date=YYYY-MM-DD/<replica>-<start_ms:013>-<seq:06>.parquet
//! <prefix>/<model>/feedback/date=YYYY-MM-DD/<replica>-<start_ms:013>-<seq:06>.parquet
//! ```
//!
//! `date` is the UTC day the segment was opened (its local name's `start_ms`). The object name
//! keeps the whole local name: local sequence numbers start again at 0 once a directory is
//! emptied (every segment uploaded), so the start time is what keeps names unique across a
//! replica's restarts, and the replica id across replicas.
//!
//! **Pruning rule.** A row logged at `t` is in a segment opened at `s` with
//! `t - max_age <= s <= t + queue delay`: a segment closes within `prediction_log_segment_age_s`
//! (at most [`MAX_SEGMENT_AGE`] with a log store, checked at start), and a record waits in the
//! writer's queue for a moment before it is written, so a segment opened just after `t` may hold
//! it. Both times are read on the same replica's clock. Rows in `[from, to)` are therefore in the
//! partitions from the day of `from - MAX_SEGMENT_AGE` to the day of `to + QUEUE_SLACK`: the
//! day before `from`'s, and `to`'s own (or the day after, when `to` is within an hour of
//! midnight). Feedback arrives after the prediction it labels, possibly on another replica, so
//! its partitions start one more hour earlier and have no end.
//!
//! `upload` moves sealed segments there; `read` brings the partitions a reader needs back into a
//! directory laid out as the local log, for the existing readers.

pub mod read;
mod upload;

pub use upload::{Backlog, Uploader};

use std::time::Duration;

use object_store::path::Path as StorePath;

/// The two logs of a model, as directories locally and in the store.
pub const KINDS: [&str; 2] = ["predictions", "feedback"];

/// The longest a segment may stay open when a log store is set (checked at start): a row is
/// then in the partition of its own day or of the day before, which is what readers prune by.
pub const MAX_SEGMENT_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long a record may wait between its time and its segment's opening, for pruning: far
/// beyond any queue the writer keeps (its queue is bounded and drained within milliseconds).
pub const QUEUE_SLACK: Duration = Duration::from_secs(3600);

/// How far replicas' clocks may disagree between a prediction and its feedback, for pruning.
pub const CLOCK_SLACK: Duration = Duration::from_secs(3600);

const DAY_MS: i64 = 86_400_000;

/// A segment's identity: when it was opened and its sequence number, as in its local name
/// `<start_ms:013>-<seq:06>.parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub start_ms: u64,
    pub seq: u64,
}

impl Segment {
    /// A local sealed segment's name; `None` for anything else (open `.arrows`, temporary
    /// files, foreign names).
    pub fn parse_local(file_name: &str) -> Option<Segment> {
        let stem = file_name.strip_suffix(".parquet")?;
        let (start, seq) = stem.split_once('-')?;
        Some(Segment {
            start_ms: digits(start)?,
            seq: digits(seq)?,
        })
    }

    /// The object name in the store: the replica, then the local name.
    pub fn store_name(&self, replica: &str) -> String {
        format!("{replica}-{:013}-{:06}.parquet", self.start_ms, self.seq)
    }

    /// An object's name read back: its replica and segment; `None` for anything else.
    pub fn parse_store(file_name: &str) -> Option<(&str, Segment)> {
        let stem = file_name.strip_suffix(".parquet")?;
        let mut parts = stem.rsplitn(3, '-');
        let seq = digits(parts.next()?)?;
        let start_ms = digits(parts.next()?)?;
        let replica = parts.next().filter(|r| !r.is_empty())?;
        Some((replica, Segment { start_ms, seq }))
    }

    /// The name a reader stages the object under: time first, so that a directory listing of
    /// several replicas' segments is in time order.
    pub fn staged_name(&self, replica: &str) -> String {
        format!("{:013}-{:06}-{replica}.parquet", self.start_ms, self.seq)
    }

    /// Its `date=` partition: the UTC day it was opened.
    pub fn day(&self) -> i64 {
        (self.start_ms as i64).div_euclid(DAY_MS)
    }
}

/// A non-empty run of ASCII digits as a number.
fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Where a segment of `model`'s `kind` log goes under `prefix`.
pub fn object_path(
    prefix: &StorePath,
    model: &str,
    kind: &str,
    segment: &Segment,
    replica: &str,
) -> StorePath {
    prefix
        .child(model)
        .child(kind)
        .child(partition(segment.day()))
        .child(segment.store_name(replica))
}

/// A partition's directory name, `date=YYYY-MM-DD`, of a day counted from the Unix epoch.
pub fn partition(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("date={y:04}-{m:02}-{d:02}")
}

/// The day of a partition's directory name; `None` for anything else.
pub fn parse_partition(name: &str) -> Option<i64> {
    let date = name.strip_prefix("date=")?;
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (digits(y)? as i64, digits(m)? as u32, digits(d)? as u32);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let day = days_from_civil(y, m, d);
    // 2026-02-31 is not a day: it must read back as itself.
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// The days (inclusive, counted from the Unix epoch) whose partitions a reader lists; `None`
/// is open-ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Days {
    pub first: Option<i64>,
    pub last: Option<i64>,
}

impl Days {
    pub fn contains(&self, day: i64) -> bool {
        self.first.is_none_or(|f| day >= f) && self.last.is_none_or(|l| day <= l)
    }

    /// The partitions that can hold predictions logged in `[from_us, to_us)` (microseconds
    /// since the epoch; `None` open), by the rule in the module's comment.
    pub fn predictions(from_us: Option<i64>, to_us: Option<i64>) -> Days {
        Days {
            first: from_us.map(|f| day_of_us(f - micros(MAX_SEGMENT_AGE))),
            last: to_us.map(|t| day_of_us(t.saturating_sub(1) + micros(QUEUE_SLACK))),
        }
    }

    /// The partitions that can hold feedback on predictions logged from `from_us` on: it comes
    /// after them, on any replica's clock, and there is no last one.
    pub fn feedback(from_us: Option<i64>) -> Days {
        Days {
            first: from_us.map(|f| day_of_us(f - micros(MAX_SEGMENT_AGE) - micros(CLOCK_SLACK))),
            last: None,
        }
    }
}

fn micros(d: Duration) -> i64 {
    d.as_micros() as i64
}

fn day_of_us(us: i64) -> i64 {
    us.div_euclid(DAY_MS * 1000)
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Its inverse, `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keep_replicas_with_dashes() {
        let s = Segment::parse_local("1796166458013-000042.parquet").unwrap();
        assert_eq!(
            s,
            Segment {
                start_ms: 1_796_166_458_013,
                seq: 42
            }
        );
        for bad in [
            "1796166458013-000042.arrows",
            "1796166458013-000042.parquet.tmp",
            "x-1.parquet",
            "-1.parquet",
            "12.parquet",
            "1-+2.parquet",
        ] {
            assert_eq!(Segment::parse_local(bad), None, "{bad}");
        }
        let name = s.store_name("cairn-7f9c-abc");
        assert_eq!(name, "cairn-7f9c-abc-1796166458013-000042.parquet");
        assert_eq!(Segment::parse_store(&name), Some(("cairn-7f9c-abc", s)));
        assert_eq!(Segment::parse_store("1796166458013-000042.parquet"), None);
        assert_eq!(Segment::parse_store("a-b-000042.parquet"), None);
        assert_eq!(s.staged_name("pod-1"), "1796166458013-000042-pod-1.parquet");
    }

    #[test]
    fn a_segment_goes_to_the_day_it_was_opened() {
        // 2026-12-01T23:07:38.013Z
        let s = Segment {
            start_ms: 1_796_166_458_013,
            seq: 3,
        };
        let path = object_path(&StorePath::from("logs/prod"), "iris", "feedback", &s, "r1");
        assert_eq!(
            path.as_ref(),
            "logs/prod/iris/feedback/date=2026-12-01/r1-1796166458013-000003.parquet"
        );
        assert_eq!(partition(0), "date=1970-01-01");
        assert_eq!(partition(-1), "date=1969-12-31");
    }

    #[test]
    fn dates_agree_with_rfc3339_and_read_back() {
        // 1970 to 3159: every date a segment can carry.
        for day in (0..435_000).step_by(97).chain([11_016, 20_513]) {
            let name = partition(day);
            assert_eq!(parse_partition(&name), Some(day), "{name}");
            let t = std::time::UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400);
            let text = humantime::format_rfc3339_seconds(t).to_string();
            assert_eq!(&name[5..], &text[..10]);
        }
        for bad in [
            "date=2026-02-30",
            "date=2026-13-01",
            "date=2026-1-01",
            "date=2026-01-01x",
            "day=2026-01-01",
            "date=2026-01-01-01",
        ] {
            assert_eq!(parse_partition(bad), None, "{bad}");
        }
    }

    /// The rule: the day before `from`'s, through `to`'s (or the next one within an hour of
    /// midnight); feedback from one more hour back, with no end.
    #[test]
    fn pruning_keeps_every_partition_that_can_hold_the_range() {
        let day = |s: &str| parse_partition(&format!("date={s}")).unwrap();
        let us = |s: &str| {
            let t = humantime::parse_rfc3339(s).unwrap();
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
        };
        let p = Days::predictions(
            Some(us("2026-12-01T10:00:00Z")),
            Some(us("2026-12-03T10:00:00Z")),
        );
        assert_eq!(p.first, Some(day("2026-11-30")));
        assert_eq!(p.last, Some(day("2026-12-03")));
        assert!(p.contains(day("2026-11-30")) && !p.contains(day("2026-11-29")));
        assert!(!p.contains(day("2026-12-04")));
        // `to` is exclusive: midnight itself needs no later day, except for the queue's slack.
        let p = Days::predictions(None, Some(us("2026-12-03T00:00:00Z")));
        assert_eq!((p.first, p.last), (None, Some(day("2026-12-03"))));
        let p = Days::predictions(None, Some(us("2026-12-03T22:30:00Z")));
        assert_eq!(p.last, Some(day("2026-12-03")));
        let p = Days::predictions(None, Some(us("2026-12-03T23:30:00Z")));
        assert_eq!(p.last, Some(day("2026-12-04")));
        let f = Days::feedback(Some(us("2026-12-01T00:30:00Z")));
        assert_eq!((f.first, f.last), (Some(day("2026-11-29")), None));
        assert_eq!(Days::feedback(None), Days::default());
        assert!(Days::default().contains(i64::MIN) && Days::default().contains(i64::MAX));
    }
}
