//! Criterion benches of monitoring's parts: how many records a model's log writer turns into
//! Arrow batches and durable segments per second, the bytes a record takes once sealed, and
//! how long a drift window of 10,000 rows × 32 features takes to compare with its baseline.
//!
//! Run: `cargo bench --bench monitor`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cairn::tensor::{DataType, Tensor};
use cairn_monitor::baseline::{Baseline, BaselineOptions};
use cairn_monitor::column::{Column, Columns};
use cairn_monitor::log::{
    derive_layout, Arm, Fsync, LayoutRequest, LogOptions, PredictionBatch, PredictionLayout,
    RequestRecord, SegmentLog, TensorInfo,
};
use cairn_monitor::report::{drift, Thresholds};

/// tabular-small's shape: a `[N, 32]` FP32 input, a label and two probabilities out.
const FEATURES: usize = 32;

fn normal(seed: u64, n: usize, shift: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() + shift
        })
        .collect()
}

fn columns(seed: u64, rows: usize, shift: f64) -> Columns {
    (0..FEATURES)
        .map(|f| {
            (
                format!("f{f}"),
                Column::Numeric(normal(
                    seed + f as u64,
                    rows,
                    if f == 0 { shift } else { 0.0 },
                )),
            )
        })
        .collect()
}

fn drift_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("drift/10000x32");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let window = columns(1000, 10_000, 0.3);
    // A 10,000-row baseline (KS exact on equal sizes) and a 5,000-row one (exact on unequal).
    for baseline_rows in [10_000usize, 5_000, 100_000] {
        let baseline = Baseline::from_columns(
            &columns(1, baseline_rows, 0.0),
            &Vec::new(),
            &BaselineOptions::default(),
        );
        group.bench_with_input(
            BenchmarkId::new("baseline_rows", baseline_rows),
            &baseline,
            |b, baseline| {
                b.iter(|| {
                    black_box(drift(
                        baseline,
                        &window,
                        &Vec::new(),
                        &Thresholds::default(),
                    ))
                })
            },
        );
    }
    group.finish();
}

/// A record as the request path makes it: the values read out of its tensors.
fn record(layout: &PredictionLayout, i: usize, rows: usize) -> RequestRecord {
    let input: Vec<f32> = (0..rows * FEATURES)
        .map(|k| ((i * 31 + k) as f32 * 0.618).sin())
        .collect();
    let labels: Vec<i64> = (0..rows).map(|r| ((i + r) % 2) as i64).collect();
    let probs: Vec<f32> = (0..rows * 2).map(|k| (k % 2) as f32 * 0.5 + 0.25).collect();
    let inputs = [Tensor::from_values(vec![rows, FEATURES], &input).unwrap()];
    let outputs = [
        Tensor::from_values(vec![rows], &labels).unwrap(),
        Tensor::from_values(vec![rows, 2], &probs).unwrap(),
    ];
    let mut values = layout.input_values(&inputs, rows);
    layout.fill_outputs(&mut values, rows, |k| outputs.get(k));
    RequestRecord {
        id: format!("0193a1b2-c3d4-7e5f-8a9b-{i:012}"),
        time_us: 1_796_000_000_000_000 + i as i64 * 100,
        version: 1,
        arm: Arm::Stable,
        latency_us: 250,
        status: "ok",
        rows,
        values,
    }
}

fn writer(c: &mut Criterion) {
    let inputs = [TensorInfo {
        name: "input".into(),
        dtype: DataType::Fp32,
        per_row: Some(FEATURES),
    }];
    let outputs = [
        TensorInfo {
            name: "label".into(),
            dtype: DataType::Int64,
            per_row: Some(1),
        },
        TensorInfo {
            name: "probabilities".into(),
            dtype: DataType::Fp32,
            per_row: Some(2),
        },
    ];
    let (layout, _) = derive_layout(&inputs, &outputs, &LayoutRequest::default()).unwrap();
    // What the writer does per batch: gather records into Arrow columns, append them to the
    // open segment, sync, and seal to Parquet when the segment is full.
    const BATCH: usize = 1024;
    let records: Vec<RequestRecord> = (0..BATCH).map(|i| record(&layout, i, 1)).collect();
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, fsync) in [
        ("batch+fsync", Fsync::EveryAppend),
        ("batch", Fsync::Interval(Duration::from_secs(3600))),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(
            dir.path(),
            Arc::clone(layout.schema()),
            LogOptions {
                segment_max_bytes: 64 << 20,
                segment_max_age: Duration::from_secs(3600),
                retention_max_bytes: Some(512 << 20),
                retention_max_age: None,
                fsync,
            },
        )
        .unwrap();
        let mut batch = PredictionBatch::new(layout.clone());
        group.bench_function(BenchmarkId::new("1024 records of 1 row", name), |b| {
            b.iter(|| {
                for r in &records {
                    batch.push(r);
                }
                log.append(&batch.finish().unwrap()).unwrap();
            })
        });
    }
    group.finish();

    // Bytes per record once sealed: 100,000 one-row records into one segment, sealed.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(
        dir.path(),
        Arc::clone(layout.schema()),
        LogOptions {
            segment_max_bytes: 1 << 30,
            segment_max_age: Duration::from_secs(3600),
            retention_max_bytes: None,
            retention_max_age: None,
            fsync: Fsync::Interval(Duration::from_secs(3600)),
        },
    )
    .unwrap();
    let mut batch = PredictionBatch::new(layout.clone());
    const RECORDS: usize = 100_000;
    for i in 0..RECORDS {
        batch.push(&record(&layout, i, 1));
        if batch.len() == BATCH {
            log.append(&batch.finish().unwrap()).unwrap();
        }
    }
    if let Some(b) = batch.finish() {
        log.append(&b).unwrap();
    }
    let open = log.bytes_on_disk();
    log.rotate().unwrap();
    let sealed = log.bytes_on_disk();
    println!(
        "bytes per record ({FEATURES} FP32 features, a label, 2 probabilities, meta columns): \
         open Arrow IPC segment {:.1}, sealed Parquet (snappy) {:.1}",
        open as f64 / RECORDS as f64,
        sealed as f64 / RECORDS as f64
    );
}

criterion_group!(benches, drift_window, writer);
criterion_main!(benches);
