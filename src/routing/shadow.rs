//! Shadow copies: the candidate runs a copy of a request on its own task, and its outputs are
//! compared with the stable version's once both exist. Nothing here can delay, change or fail
//! the answer the caller gets.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use cairn_monitor::log::{Arm as LogArm, RequestRecord};

use super::{Logged, Tracker};
use crate::batching::ValidatedRequest;
use crate::model::LoadedVersion;
use crate::offload::Offload;

/// Outputs up to this many elements (a few hundred rows of class scores) are compared on the
/// task that received them: a few microseconds.
const INLINE_COMPARE_ELEMENTS: usize = 16 << 10;
use crate::tensor::{DataType, Tensor, TensorData};

/// Queues the copy on the candidate and returns the channel for the stable outputs, or `None`
/// when no copy could be made (incompatible inputs, full queue), which counts as a shadow error.
pub(super) fn start(
    stable: &Arc<LoadedVersion>,
    candidate: &Arc<LoadedVersion>,
    request: &ValidatedRequest,
    tracker: &Arc<Tracker>,
    offload: &Offload,
    logged: Option<&Logged>,
) -> Option<oneshot::Sender<Vec<Tensor>>> {
    tracker.shadow.record_sent();
    if candidate.io.inputs != stable.io.inputs {
        tracker.shadow.record_error();
        return None;
    }
    let started = Instant::now();
    let ticket = match candidate.scheduler.submit(request.clone()) {
        Ok(ticket) => ticket,
        Err(_) => {
            tracker.shadow.record_error();
            tracker.candidate.record(false, started.elapsed());
            return None;
        }
    };
    let (tx, rx) = oneshot::channel::<Vec<Tensor>>();
    let (stable, candidate, tracker, offload) = (
        Arc::clone(stable),
        Arc::clone(candidate),
        Arc::clone(tracker),
        offload.clone(),
    );
    // The candidate's copy is logged (marked as a shadow) when the request is and the
    // candidate logs too.
    let log = logged
        .zip(candidate.monitor.clone())
        .and_then(|(l, monitor)| {
            let buffers = monitor.input_values(&l.id, &request.inputs, request.rows)?;
            Some((monitor, l.time_us, buffers, request.rows))
        });
    tokio::spawn(async move {
        let shadow_outputs = ticket.wait().await;
        tracker
            .candidate
            .record(shadow_outputs.is_ok(), started.elapsed());
        if let Some((monitor, time_us, buffers, rows)) = log {
            let crate::monitoring::RecordBuffers { mut values, id } = buffers;
            let status = match &shadow_outputs {
                Ok(outputs) => {
                    monitor.layout.fill_outputs(&mut values, rows, |i| {
                        super::served_output(&candidate, outputs, i)
                    });
                    "ok"
                }
                Err(e) => super::failure_reason(&super::InferError::Scheduler(e.clone())).label(),
            };
            monitor
                .log(RequestRecord {
                    id,
                    time_us,
                    version: candidate.version,
                    arm: LogArm::Shadow,
                    latency_us: started.elapsed().as_micros() as u64,
                    status,
                    rows,
                    values,
                })
                .await;
        }
        let Ok(shadow_outputs) = shadow_outputs else {
            tracker.shadow.record_error();
            return;
        };
        // The stable request may have failed; then there is nothing to compare.
        let Ok(stable_outputs) = rx.await else {
            return;
        };
        let elements: usize = stable_outputs.iter().map(Tensor::len).sum();
        let judge = move || {
            let c = compare(&stable, &stable_outputs, &candidate, &shadow_outputs);
            tracker
                .shadow
                .record_comparison(c.rows, c.rows_agreeing, c.abs_diff_sum, c.elements);
        };
        // Small outputs are compared here; large ones on the blocking pool, or not at all when
        // its share is taken (a shadow is best effort, never a cost to the caller).
        if elements <= INLINE_COMPARE_ELEMENTS {
            judge();
        } else if !offload.try_spawn(judge) {
            tracing::debug!("shadow comparison skipped: the blocking pool is busy");
        }
    });
    Some(tx)
}

/// How far two versions' outputs for the same rows are apart.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Comparison {
    pub rows: u64,
    pub rows_agreeing: u64,
    pub abs_diff_sum: f64,
    pub elements: u64,
}

/// Compares outputs of the same name. Top-class agreement uses the first floating-point output
/// shaped `[rows, classes]` (probabilities, scores), or else the first integer output shaped
/// `[rows]` (labels); the mean absolute difference covers every floating-point output.
pub(super) fn compare(
    stable: &LoadedVersion,
    stable_outputs: &[Tensor],
    candidate: &LoadedVersion,
    candidate_outputs: &[Tensor],
) -> Comparison {
    let mut result = Comparison::default();
    let mut scored_rows = false;
    let mut label_pair: Option<(&Tensor, &Tensor)> = None;
    for (spec, &i) in stable.io.outputs.iter().zip(&stable.io.output_index) {
        let Some(j) = candidate
            .io
            .outputs
            .iter()
            .position(|o| o.name == spec.name)
        else {
            continue;
        };
        let (Some(a), Some(b)) = (
            stable_outputs.get(i),
            candidate_outputs.get(candidate.io.output_index[j]),
        ) else {
            continue;
        };
        if a.dtype != b.dtype || a.shape != b.shape {
            continue;
        }
        match (values_f64(a), values_f64(b)) {
            (Some(x), Some(y)) => {
                result.abs_diff_sum += x.iter().zip(&y).map(|(p, q)| (p - q).abs()).sum::<f64>();
                result.elements += x.len() as u64;
                if !scored_rows && a.shape.len() == 2 && a.shape[1] >= 2 {
                    scored_rows = true;
                    let classes = a.shape[1];
                    result.rows = a.shape[0] as u64;
                    result.rows_agreeing = x
                        .chunks(classes)
                        .zip(y.chunks(classes))
                        .filter(|(p, q)| argmax(p) == argmax(q))
                        .count() as u64;
                }
            }
            _ => {
                if label_pair.is_none() && a.shape.len() == 1 {
                    label_pair = Some((a, b));
                }
            }
        }
    }
    if !scored_rows {
        if let Some((a, b)) = label_pair {
            result.rows = a.shape[0] as u64;
            result.rows_agreeing = match (&a.data, &b.data) {
                (TensorData::Fixed(x), TensorData::Fixed(y)) => {
                    let size = a.dtype.size().unwrap_or(1);
                    x.chunks(size)
                        .zip(y.chunks(size))
                        .filter(|(p, q)| p == q)
                        .count() as u64
                }
                (TensorData::Bytes(x), TensorData::Bytes(y)) => {
                    x.iter().zip(y).filter(|(p, q)| p == q).count() as u64
                }
                _ => 0,
            };
        }
    }
    result
}

fn values_f64(t: &Tensor) -> Option<Vec<f64>> {
    match t.dtype {
        DataType::Fp32 => t
            .to_values::<f32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DataType::Fp64 => t.to_values::<f64>(),
        _ => None,
    }
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}
