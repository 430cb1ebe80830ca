//! One engine worker: an OS thread that owns a session, takes batches from its version's queue,
//! runs them and answers every job in them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::{Dropped, Job, Take, QUEUED, RUNNING};
use super::{SchedulerError, Shared};
use crate::engine::{BatchInput, Engine, EngineError, Session};
use crate::metrics::{BatchTimings, FailureReason};
use crate::tensor::Tensor;

pub(super) struct Worker {
    shared: Arc<Shared>,
    engine: Arc<dyn Engine>,
    session: Box<dyn Session>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, engine: Arc<dyn Engine>, session: Box<dyn Session>) -> Worker {
        Worker {
            shared,
            engine,
            session,
        }
    }

    pub fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            if !self.execute(batch) {
                break;
            }
        }
        // The session and this worker's hold on the engine go first, so that when the last
        // worker leaves, the version's model memory is already free.
        let Worker {
            shared,
            engine,
            session,
        } = self;
        drop(session);
        drop(engine);
        let last = {
            let mut state = shared.lock();
            state.live_workers -= 1;
            if state.live_workers == 0 {
                // The last worker answers whatever is left with `Stopped` by dropping it.
                let orphans = state.queue.drain();
                shared.metrics.set_queue_depth(0);
                shared.metrics.add_pending(-(orphans.len() as i64));
            }
            state.live_workers == 0
        };
        if last {
            crate::memory::release_freed_memory();
        }
    }

    /// Blocks until a batch is ready, or returns `None` once the version is closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let mut spin = true;
        loop {
            let mut dropped = Dropped::default();
            let now = Instant::now();
            let closed = state.closed;
            let take = state.queue.take(now, closed, &mut dropped);
            let removed = dropped.canceled + dropped.expired;
            if removed > 0 {
                shared.metrics.add_pending(-(removed as i64));
                for _ in 0..dropped.canceled {
                    shared
                        .metrics
                        .record_failure(FailureReason::Canceled, Duration::ZERO);
                }
            }
            match take {
                Take::Batch(jobs) => {
                    shared.metrics.set_queue_depth(state.queue.len());
                    if !state.queue.is_empty() && state.waiting_workers > 0 {
                        shared.ready.notify_one();
                    }
                    return Some(jobs);
                }
                Take::WaitUntil(at) => {
                    shared.metrics.set_queue_depth(state.queue.len());
                    state.waiting_workers += 1;
                    shared
                        .ready
                        .wait_for(&mut state, at.saturating_duration_since(now));
                    state.waiting_workers -= 1;
                }
                Take::Empty => {
                    shared.metrics.set_queue_depth(0);
                    if state.closed {
                        return None;
                    }
                    // Under load the next request arrives within microseconds: watching for it
                    // briefly, without the lock, saves the sleep and the wake-up (two system
                    // calls and a context switch) that would bracket it. Only right after a
                    // batch, so an idle version costs nothing.
                    if spin {
                        spin = false;
                        let seen = shared.submitted.load(Ordering::Relaxed);
                        parking_lot::MutexGuard::unlocked(&mut state, || {
                            spin_for_work(&shared.submitted, seen, SPIN_FOR_WORK)
                        });
                        // Look again under the lock whether the spin saw a job or not: one
                        // submitted after its last look, while this worker was not yet counted
                        // as waiting, was queued without a wake-up, and sleeping now would
                        // leave it there until the next request came.
                        continue;
                    }
                    state.waiting_workers += 1;
                    shared.ready.wait(&mut state);
                    state.waiting_workers -= 1;
                }
            }
        }
    }

    /// Runs one batch and answers its jobs. Returns false when this worker can no longer run.
    fn execute(&mut self, mut jobs: Vec<Job>) -> bool {
        let metrics = &self.shared.metrics;
        let taken = jobs.len();
        // A waiter may have expired its job between `take` and now; such a job does not run.
        jobs.retain(|job| {
            job.state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        let started = Instant::now();
        for job in &jobs {
            metrics.record_queue(started.saturating_duration_since(job.enqueued));
        }
        let batching = self.shared.settings.policy.batch.is_batched();
        let rows: usize = jobs.iter().map(|j| j.rows).sum();

        let mut panicked = false;
        let outcome = if jobs.is_empty() {
            Ok(None)
        } else {
            let inputs = batch_inputs(&jobs, batching, rows);
            let session = &mut self.session;
            // A panic inside an engine fails this batch alone; the session is rebuilt below.
            catch_unwind(AssertUnwindSafe(|| {
                session.set_inputs(&inputs)?;
                let computing = Instant::now();
                let outputs = session.run()?;
                Ok(Some((computing, outputs)))
            }))
            .unwrap_or_else(|panic| {
                panicked = true;
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(EngineError::Run(format!("the engine panicked: {what}")))
            })
        };
        let mut keep_running = true;
        match outcome {
            Ok(None) => {}
            Ok(Some((computing, outputs))) => {
                let finished = Instant::now();
                let replies = split(&jobs, outputs, batching, rows);
                // Statistics are recorded before anyone is answered, so a client that reads them
                // after its response sees its own batch counted.
                metrics.record_batch(BatchTimings {
                    rows,
                    compute_input: computing - started,
                    compute_infer: finished - computing,
                    compute_output: finished.elapsed(),
                });
                if let Some(work) = self.session.device_work() {
                    metrics.record_device_work(work);
                }
                for (job, reply) in jobs.into_iter().zip(replies) {
                    if job.reply.send(reply).is_err() {
                        metrics.record_failure(FailureReason::Canceled, Duration::ZERO);
                    }
                }
            }
            Err(error) => {
                for job in &jobs {
                    let _enter = job.span.enter();
                    tracing::warn!(model = %self.shared.settings.name, %error, "batch failed");
                }
                for job in jobs {
                    let _ = job.reply.send(Err(SchedulerError::Engine(error.clone())));
                }
                if panicked {
                    match self.engine.new_session() {
                        Ok(session) => self.session = session,
                        Err(e) => {
                            tracing::error!(model = %self.shared.settings.name, error = %e,
                                "engine worker cannot recover its session and stops");
                            keep_running = false;
                        }
                    }
                }
            }
        }
        metrics.add_pending(-(taken as i64));
        keep_running
    }
}

/// Watches for a job submitted after `seen` for at most `budget`.
fn spin_for_work(submitted: &std::sync::atomic::AtomicU64, seen: u64, budget: Duration) -> bool {
    let until = Instant::now() + budget;
    let mut i = 0u32;
    loop {
        if submitted.load(Ordering::Relaxed) != seen {
            return true;
        }
        i = i.wrapping_add(1);
        if i % 64 == 0 {
            if Instant::now() >= until {
                return false;
            }
            // Two cores run the HTTP threads too: give them the core now and then.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// How long a worker that just finished a batch watches for the next request before it sleeps.
/// Measured on tabular-small at concurrency 64 (benches/README.md): the sleep and wake-up it
/// saves are worth more than the cycles, and after the budget the worker sleeps as before.
const SPIN_FOR_WORK: Duration = Duration::from_micros(50);

/// Each input of the batch, its parts in job order.
fn batch_inputs(jobs: &[Job], batching: bool, rows: usize) -> Vec<BatchInput<'_>> {
    let first = &jobs[0];
    (0..first.inputs.len())
        .map(|i| {
            let mut shape = first.inputs[i].shape.clone();
            if batching {
                shape[0] = rows;
            }
            BatchInput {
                shape,
                parts: jobs.iter().map(|j| &j.inputs[i]).collect(),
            }
        })
        .collect()
}

/// Splits the batch outputs back to the jobs by slicing (no copy): one reply per job, in order.
fn split(
    jobs: &[Job],
    outputs: Vec<Tensor>,
    batching: bool,
    rows: usize,
) -> Vec<Result<Vec<Tensor>, SchedulerError>> {
    if !batching {
        // A job that runs alone keeps the outputs whole.
        return vec![Ok(outputs)];
    }
    if let Some(bad) = outputs.iter().position(|o| o.shape.first() != Some(&rows)) {
        let error = EngineError::Run(format!(
            "output {bad} has shape {:?}, which does not split into the batch's {rows} rows",
            outputs[bad].shape
        ));
        return jobs
            .iter()
            .map(|_| Err(SchedulerError::Engine(error.clone())))
            .collect();
    }
    let mut offset = 0;
    jobs.iter()
        .map(|job| {
            let mine = outputs
                .iter()
                .map(|o| o.slice_rows(offset, job.rows))
                .collect();
            offset += job.rows;
            Ok(mine)
        })
        .collect()
}
