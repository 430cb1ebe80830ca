//! Scheduling of one loaded model version: a bounded queue, a dynamic batcher and `instances`
//! engine workers, each on its own OS thread.
//!
//! A request becomes a job in the version's queue ([`Scheduler::submit`] never blocks: a full
//! queue is an immediate error). A worker that is free takes the next batch (rules in
//! [`queue::BatchQueue`]), copies the batch's rows once into the engine's input buffers, runs it
//! and answers each job through its own channel with zero-copy slices of the batch outputs.
//! Requests gather while every worker is busy, which is what makes batches under load.
//! Nothing here runs on a tokio worker, and nothing here knows HTTP or the wire format.

mod queue;
mod worker;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use queue::BatchPolicy;
use queue::{BatchQueue, Job, EXPIRED, QUEUED};

use crate::engine::{Engine, EngineError};
use crate::metrics::VersionMetrics;
use crate::tensor::Tensor;

/// A request checked against its model (built only by `routing`'s validation): inputs in the
/// engine's signature order, with `rows` rows each along the batch dimension.
#[derive(Clone, Debug)]
pub struct ValidatedRequest {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    /// The request's own timeout; the version's default applies when shorter or when absent.
    pub timeout: Option<Duration>,
}

/// How a version schedules its requests.
#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    /// Used in thread names and logs.
    pub name: String,
    pub policy: BatchPolicy,
    pub instances: usize,
    pub max_queue_size: usize,
    pub default_timeout: Option<Duration>,
}

/// Why a request got no outputs from its version.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the queue of {model} is full ({max} requests waiting); retry later")]
    QueueFull { model: String, max: usize },
    #[error("request timed out after waiting {waited_us} µs in the queue of {model}")]
    Timeout { model: String, waited_us: u128 },
    #[error("{model} stopped before the request ran")]
    Stopped { model: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The handle of a version's scheduler. Dropping it stops new work; the workers finish what is
/// queued, then exit and release the engine.
pub struct Scheduler {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<State>,
    ready: Condvar,
    /// Jobs pushed since start, read without the lock by a worker that spins for work.
    submitted: std::sync::atomic::AtomicU64,
    settings: SchedulerSettings,
    metrics: VersionMetrics,
}

struct State {
    queue: BatchQueue,
    closed: bool,
    live_workers: usize,
    /// Workers blocked on `ready`. A submit wakes one only when some wait: under load every
    /// worker is busy and a wake-up would be a wasted system call per request.
    waiting_workers: usize,
}

impl Scheduler {
    /// Creates every worker's session up front, so a version that cannot run never serves.
    pub fn start(
        engine: &Arc<dyn Engine>,
        settings: SchedulerSettings,
        metrics: VersionMetrics,
    ) -> Result<Scheduler, EngineError> {
        let sessions = (0..settings.instances.max(1))
            .map(|_| engine.new_session())
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(State {
                queue: BatchQueue::new(settings.policy.clone()),
                closed: false,
                live_workers: sessions.len(),
                waiting_workers: 0,
            }),
            ready: Condvar::new(),
            submitted: std::sync::atomic::AtomicU64::new(0),
            settings,
            metrics,
        });
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = worker::Worker::new(Arc::clone(&shared), Arc::clone(engine), session);
            let spawned = std::thread::Builder::new()
                .name(format!("engine-{}-{i}", shared.settings.name))
                .spawn(move || worker.run());
            if let Err(e) = spawned {
                shared.close();
                return Err(EngineError::Run(format!(
                    "cannot start an engine worker thread: {e}"
                )));
            }
        }
        Ok(Scheduler { shared })
    }

    /// Queues a request. Never blocks: a full queue answers at once.
    pub fn submit(&self, request: ValidatedRequest) -> Result<Ticket, SchedulerError> {
        let settings = &self.shared.settings;
        let now = Instant::now();
        let timeout = match (request.timeout, settings.default_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = timeout.map(|t| now + t);
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            inputs: request.inputs,
            rows: request.rows,
            reply: tx,
            state: Arc::clone(&state),
            enqueued: now,
            deadline,
            span: tracing::Span::current(),
        };
        let wake = {
            let mut guard = self.shared.lock();
            if guard.closed {
                return Err(SchedulerError::Stopped {
                    model: settings.name.clone(),
                });
            }
            if guard.queue.len() >= settings.max_queue_size {
                return Err(SchedulerError::QueueFull {
                    model: settings.name.clone(),
                    max: settings.max_queue_size,
                });
            }
            guard.queue.push(job);
            self.shared.submitted.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.set_queue_depth(guard.queue.len());
            guard.waiting_workers > 0
        };
        self.shared.metrics.add_pending(1);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(Ticket {
            rx,
            state,
            enqueued: now,
            deadline,
            model: settings.name.clone(),
        })
    }

    /// Requests waiting in the queue now.
    pub fn queue_len(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Shared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.queue.lock()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// A queued request's claim on its outputs.
pub struct Ticket {
    rx: oneshot::Receiver<Result<Vec<Tensor>, SchedulerError>>,
    state: Arc<AtomicU8>,
    enqueued: Instant,
    deadline: Option<Instant>,
    model: String,
}

impl Ticket {
    /// Waits for the outputs (in signature order). At the deadline a request still queued
    /// fails with a timeout and will not run; one already computing is waited for.
    pub async fn wait(mut self) -> Result<Vec<Tensor>, SchedulerError> {
        if let Some(deadline) = self.deadline {
            tokio::select! {
                biased;
                result = &mut self.rx => return self.finish(result),
                () = tokio::time::sleep_until(deadline.into()) => {
                    if self
                        .state
                        .compare_exchange(QUEUED, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Err(self.timeout());
                    }
                }
            }
        }
        let result = (&mut self.rx).await;
        self.finish(result)
    }

    fn finish(
        &self,
        result: Result<Result<Vec<Tensor>, SchedulerError>, oneshot::error::RecvError>,
    ) -> Result<Vec<Tensor>, SchedulerError> {
        match result {
            Ok(outputs) => outputs,
            Err(_) if self.state.load(Ordering::Acquire) == EXPIRED => Err(self.timeout()),
            Err(_) => Err(SchedulerError::Stopped {
                model: self.model.clone(),
            }),
        }
    }

    fn timeout(&self) -> SchedulerError {
        SchedulerError::Timeout {
            model: self.model.clone(),
            waited_us: self.enqueued.elapsed().as_micros(),
        }
    }
}
