//! The segment log: rotation, sealing to Parquet, recovery of torn tails, retention.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use cairn_monitor::log::{read_dir, Fsync, LogOptions, SegmentLog};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]))
}

fn batch(from: i64, rows: i64) -> RecordBatch {
    let n: Vec<i64> = (from..from + rows).collect();
    let x: Vec<f64> = n.iter().map(|&v| v as f64 * 0.5).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(n)),
            Arc::new(Float64Array::from(x)),
        ],
    )
    .unwrap()
}

fn numbers(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            (0..col.len()).map(|i| col.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

fn files(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(ext))
        .count()
}

fn options() -> LogOptions {
    LogOptions {
        segment_max_bytes: 4096,
        segment_max_age: Duration::from_secs(3600),
        retention_max_bytes: None,
        retention_max_age: None,
        fsync: Fsync::EveryAppend,
    }
}

#[test]
fn appends_rotate_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, report) = SegmentLog::open(dir.path(), schema(), options()).unwrap();
    assert_eq!(report.recovered_segments, 0);
    for i in 0..20 {
        log.append(&batch(i * 50, 50)).unwrap();
    }
    assert!(
        files(dir.path(), "parquet") >= 2,
        "segments rotated by size"
    );
    assert!(files(dir.path(), "arrows") <= 1, "at most one open segment");
    // The open segment is readable too, so nothing acknowledged is invisible.
    let (batches, read) = read_dir(dir.path()).unwrap();
    assert_eq!(numbers(&batches), (0..1000).collect::<Vec<_>>());
    assert_eq!(read.torn_tails, 0);
    log.close().unwrap();
    assert_eq!(
        files(dir.path(), "arrows"),
        0,
        "a clean close seals everything"
    );
    let (batches, _) = read_dir(dir.path()).unwrap();
    assert_eq!(numbers(&batches), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_crashed_segment_is_recovered_and_its_torn_tail_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.segment_max_bytes = 1 << 30;
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), opts.clone()).unwrap();
    for i in 0..5 {
        log.append(&batch(i * 10, 10)).unwrap();
    }
    // A crash: the process ends without sealing, and its last write is cut short.
    drop(log);
    let open = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().and_then(|x| x.to_str()) == Some("arrows"))
        .unwrap()
        .path();
    let len = std::fs::metadata(&open).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&open).unwrap();
    f.set_len(len - 30).unwrap();
    drop(f);
    let (log, report) = SegmentLog::open(dir.path(), schema(), opts).unwrap();
    assert_eq!(report.recovered_segments, 1);
    assert_eq!(report.torn_tails, 1);
    assert_eq!(report.recovered_rows, 40, "the four complete batches");
    assert_eq!(files(dir.path(), "arrows"), 0);
    let (batches, read) = read_dir(dir.path()).unwrap();
    assert_eq!(numbers(&batches), (0..40).collect::<Vec<_>>());
    assert_eq!(read.torn_tails, 0);
    drop(log);
}

#[test]
fn a_segment_cut_inside_its_schema_is_dropped_without_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0000000000001-000000.arrows"), [0xff, 0xff]).unwrap();
    let (_log, report) = SegmentLog::open(dir.path(), schema(), options()).unwrap();
    assert_eq!(report.recovered_segments, 1);
    assert_eq!(report.torn_tails, 1);
    assert_eq!(report.recovered_rows, 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn retention_deletes_the_oldest_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retention_max_bytes = Some(12_000);
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), opts).unwrap();
    for i in 0..200 {
        log.append(&batch(i * 50, 50)).unwrap();
    }
    log.close().unwrap();
    assert!(log_bytes(dir.path()) <= 12_000, "{}", log_bytes(dir.path()));
    let (batches, _) = read_dir(dir.path()).unwrap();
    let kept = numbers(&batches);
    assert!(!kept.is_empty());
    assert_eq!(*kept.last().unwrap(), 9999, "the newest records are kept");
    assert!(kept[0] > 0, "the oldest records went");
}

#[test]
fn a_new_schema_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), options()).unwrap();
    log.append(&batch(0, 5)).unwrap();
    let wider: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
        Field::new("y", DataType::Float64, true),
    ]));
    log.set_schema(Arc::clone(&wider)).unwrap();
    let b = RecordBatch::try_new(
        wider,
        vec![
            Arc::new(Int64Array::from(vec![5])),
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(Float64Array::from(vec![2.0])),
        ],
    )
    .unwrap();
    log.append(&b).unwrap();
    log.close().unwrap();
    let (batches, read) = read_dir(dir.path()).unwrap();
    assert_eq!(read.segments, 2);
    assert_eq!(numbers(&batches), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(batches.last().unwrap().num_columns(), 3);
}

/// A schema with `extra` more columns than `schema()`, and a batch of it.
fn wider(extra: usize, n: i64) -> RecordBatch {
    let mut fields = vec![
        Field::new("n", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ];
    let mut columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(Int64Array::from(vec![n])),
        Arc::new(Float64Array::from(vec![0.0])),
    ];
    for i in 0..extra {
        fields.push(Field::new(format!("y{i}"), DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from(vec![i as f64])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// Batches of two schemas interleaved (a canary whose logged columns differ from the stable
/// version's) go to two open segments: no segment is sealed per switch, every row is kept, and
/// the log holds one segment per schema.
#[test]
fn interleaved_schemas_share_no_segment_and_seal_none_per_switch() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_bytes: 1 << 20,
        ..options()
    };
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), opts).unwrap();
    for i in 0..40 {
        let b = if i % 2 == 0 { batch(i, 1) } else { wider(1, i) };
        log.set_schema(b.schema()).unwrap();
        log.append(&b).unwrap();
    }
    assert_eq!(
        files(dir.path(), "arrows"),
        2,
        "one open segment per schema"
    );
    assert_eq!(
        files(dir.path(), "parquet"),
        0,
        "nothing sealed by a switch"
    );
    log.close().unwrap();
    assert_eq!(files(dir.path(), "parquet"), 2);
    let (batches, read) = read_dir(dir.path()).unwrap();
    assert_eq!(read.segments, 2);
    let mut n = numbers(&batches);
    n.sort_unstable();
    assert_eq!(n, (0..40).collect::<Vec<_>>());
}

/// More schemas at once than `MAX_OPEN`: the one least recently appended to is sealed, the
/// others stay open; nothing is lost.
#[test]
fn schemas_beyond_the_open_limit_seal_the_least_recent() {
    use cairn_monitor::log::MAX_OPEN;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), options()).unwrap();
    for extra in 0..=MAX_OPEN {
        let b = wider(extra, extra as i64);
        log.set_schema(b.schema()).unwrap();
        log.append(&b).unwrap();
    }
    assert_eq!(files(dir.path(), "arrows"), MAX_OPEN);
    assert_eq!(files(dir.path(), "parquet"), 1);
    // The first schema was sealed; the second, appended to again, stays open.
    let b = wider(1, 100);
    log.set_schema(b.schema()).unwrap();
    log.append(&b).unwrap();
    assert_eq!(files(dir.path(), "parquet"), 1);
    log.close().unwrap();
    let (batches, _) = read_dir(dir.path()).unwrap();
    let mut n = numbers(&batches);
    n.sort_unstable();
    let mut want: Vec<i64> = (0..=MAX_OPEN as i64).collect();
    want.push(100);
    assert_eq!(n, want);
}

fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Sealing on its own thread: while segments are being sealed a reader sees every row exactly
/// once, `close` waits for the sealer, and retention still holds.
#[test]
fn background_sealing_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), options()).unwrap();
    log.seal_in_background("seal-test").unwrap();
    for i in 0..200 {
        log.append(&batch(i * 50, 50)).unwrap();
        if i % 20 == 0 {
            let (batches, _) = read_dir(dir.path()).unwrap();
            assert_eq!(numbers(&batches), (0..(i + 1) * 50).collect::<Vec<_>>());
        }
    }
    log.close().unwrap();
    assert_eq!(
        files(dir.path(), "arrows"),
        0,
        "close waited for the sealer"
    );
    assert!(files(dir.path(), "parquet") >= 2);
    let (batches, _) = read_dir(dir.path()).unwrap();
    assert_eq!(numbers(&batches), (0..10_000).collect::<Vec<_>>());

    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retention_max_bytes = Some(12_000);
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), opts).unwrap();
    log.seal_in_background("seal-test").unwrap();
    for i in 0..200 {
        log.append(&batch(i * 50, 50)).unwrap();
    }
    log.close().unwrap();
    assert!(log_bytes(dir.path()) <= 12_000, "{}", log_bytes(dir.path()));
    let (batches, _) = read_dir(dir.path()).unwrap();
    assert_eq!(*numbers(&batches).last().unwrap(), 9999);
}

/// A segment caught mid-seal, with its IPC stream and its Parquet copy side by side: read once.
#[test]
fn a_segment_in_both_forms_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.segment_max_bytes = 1 << 30;
    let (mut log, _) = SegmentLog::open(dir.path(), schema(), opts).unwrap();
    for i in 0..4 {
        log.append(&batch(i * 50, 50)).unwrap();
    }
    let open: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("arrows"))
        .collect();
    assert_eq!(open.len(), 1);
    let stream = std::fs::read(&open[0]).unwrap();
    log.close().unwrap();
    std::fs::write(&open[0], stream).unwrap();
    assert_eq!(
        (files(dir.path(), "arrows"), files(dir.path(), "parquet")),
        (1, 1)
    );
    let (batches, _) = read_dir(dir.path()).unwrap();
    assert_eq!(numbers(&batches), (0..200).collect::<Vec<_>>());
}

/// Feedback acknowledged in a segment larger than the whole retention limit: sealed and kept
/// (the newest sealed segment is never deleted), inline and on the sealer thread alike.
#[test]
fn a_segment_larger_than_the_retention_limit_is_kept_once_sealed() {
    for background in [false, true] {
        // Every append fills a segment; the limit is one byte.
        let tiny = || LogOptions {
            segment_max_bytes: 1,
            retention_max_bytes: Some(1),
            ..options()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), schema(), tiny()).unwrap();
        if background {
            log.seal_in_background("seal-test").unwrap();
        }
        log.append(&batch(0, 500)).unwrap();
        log.close().unwrap();
        let (batches, _) = read_dir(dir.path()).unwrap();
        assert_eq!(numbers(&batches), (0..500).collect::<Vec<_>>());
        // A later segment replaces it as the one kept.
        let (mut log, _) = SegmentLog::open(dir.path(), schema(), tiny()).unwrap();
        log.append(&batch(500, 10)).unwrap();
        log.close().unwrap();
        let (batches, _) = read_dir(dir.path()).unwrap();
        assert_eq!(numbers(&batches), (500..510).collect::<Vec<_>>());
    }
}
