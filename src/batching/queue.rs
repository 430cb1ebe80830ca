//! The batching decision as a plain struct: which queued requests form the next batch, and when.
//!
//! No threads, no clocks of its own: `take(now)` is given the time, so the rules (Triton's
//! dynamic batcher semantics) are unit-tested without a runtime and without sleeping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::SchedulerError;
use crate::config::BatchShape;
use crate::tensor::Tensor;

/// A job's life, shared between the worker and the waiting request so that exactly one of them
/// decides whether a timed-out job still runs.
pub(super) const QUEUED: u8 = 0;
pub(super) const RUNNING: u8 = 1;
pub(super) const EXPIRED: u8 = 2;

pub(super) type Reply = oneshot::Sender<Result<Vec<Tensor>, SchedulerError>>;

/// One queued request.
pub(super) struct Job {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub reply: Reply,
    pub state: Arc<AtomicU8>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub span: tracing::Span,
}

impl Job {
    fn same_row_shape(&self, other: &Job) -> bool {
        self.inputs
            .iter()
            .zip(&other.inputs)
            .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// Batching rules of one version.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// Rows a batch may hold; `None`: each request runs alone, with whatever batch dimension
    /// it carries.
    pub batch: BatchShape,
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay: Duration,
}

/// What a free worker should do next.
pub(super) enum Take {
    Batch(Vec<Job>),
    /// Nothing is ready; look again at this time, or sooner if a request arrives.
    WaitUntil(Instant),
    Empty,
}

/// Jobs removed without running, for the caller to count.
#[derive(Default, Debug, PartialEq, Eq)]
pub(super) struct Dropped {
    pub canceled: usize,
    pub expired: usize,
}

pub(super) struct BatchQueue {
    jobs: VecDeque<Job>,
    policy: BatchPolicy,
}

impl BatchQueue {
    pub fn new(policy: BatchPolicy) -> BatchQueue {
        BatchQueue {
            jobs: VecDeque::new(),
            policy,
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn push(&mut self, job: Job) {
        self.jobs.push_back(job);
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Removes everything, for a queue whose workers are gone.
    pub fn drain(&mut self) -> Vec<Job> {
        self.jobs.drain(..).collect()
    }

    /// Decides the next batch. Jobs whose client went away are dropped; jobs past their
    /// deadline are marked expired and dropped, which their waiters read as a timeout; neither
    /// ever reaches the engine. `flush` sends what is queued without waiting for the delay (the
    /// version is stopping).
    pub fn take(&mut self, now: Instant, flush: bool, dropped: &mut Dropped) -> Take {
        self.jobs.retain_mut(|job| {
            // Expiry first: a waiter that gave up on its timeout also closed its channel, and its
            // failure is a timeout (which the waiter records), not a cancellation.
            let expired = job.state.load(Ordering::Acquire) == EXPIRED
                || (job.deadline.is_some_and(|d| d <= now)
                    && job
                        .state
                        .compare_exchange(QUEUED, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok());
            if expired {
                dropped.expired += 1;
                return false;
            }
            if job.reply.is_closed() {
                dropped.canceled += 1;
                return false;
            }
            true
        });
        let Some(oldest) = self.jobs.front() else {
            return Take::Empty;
        };
        let BatchShape::Rows { max } = self.policy.batch else {
            return Take::Batch(self.split(1));
        };

        let mut rows = 0;
        let mut count = 0;
        let mut preferred = None;
        let mut cannot_grow = false;
        for job in &self.jobs {
            if rows + job.rows > max || !job.same_row_shape(oldest) {
                cannot_grow = true;
                break;
            }
            rows += job.rows;
            count += 1;
            if self.policy.preferred_batch_sizes.contains(&rows) {
                preferred = Some(count);
            }
        }
        if rows == max || cannot_grow {
            return Take::Batch(self.split(count));
        }
        if let Some(count) = preferred {
            return Take::Batch(self.split(count));
        }
        let send_at = oldest.enqueued + self.policy.max_queue_delay;
        if send_at <= now || flush {
            return Take::Batch(self.split(count));
        }
        Take::WaitUntil(send_at)
    }

    fn split(&mut self, count: usize) -> Vec<Job> {
        self.jobs.drain(..count).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        queue: BatchQueue,
        start: Instant,
        receivers: Vec<oneshot::Receiver<Result<Vec<Tensor>, SchedulerError>>>,
    }

    impl Harness {
        fn new(max: usize, preferred: &[usize], delay_us: u64) -> Harness {
            Harness {
                queue: BatchQueue::new(BatchPolicy {
                    batch: BatchShape::of(max as u32),
                    preferred_batch_sizes: preferred.to_vec(),
                    max_queue_delay: Duration::from_micros(delay_us),
                }),
                start: Instant::now(),
                receivers: Vec::new(),
            }
        }

        fn at(&self, us: u64) -> Instant {
            self.start + Duration::from_micros(us)
        }

        /// Queues a request of `rows` rows (of `width` columns) that arrived at `at_us`.
        fn push(&mut self, rows: usize, width: usize, at_us: u64, timeout_us: Option<u64>) {
            let (tx, rx) = oneshot::channel();
            self.receivers.push(rx);
            let input = Tensor::from_values(vec![rows, width], &vec![0f32; rows * width]).unwrap();
            self.queue.push(Job {
                inputs: vec![input],
                rows,
                reply: tx,
                state: Arc::new(AtomicU8::new(QUEUED)),
                enqueued: self.at(at_us),
                deadline: timeout_us.map(|t| self.at(at_us + t)),
                span: tracing::Span::none(),
            });
        }

        fn take_rows(&mut self, now_us: u64) -> Result<Vec<usize>, Option<u64>> {
            let mut dropped = Dropped::default();
            match self.queue.take(self.at(now_us), false, &mut dropped) {
                Take::Batch(jobs) => Ok(jobs.iter().map(|j| j.rows).collect()),
                Take::WaitUntil(t) => Err(Some((t - self.start).as_micros() as u64)),
                Take::Empty => Err(None),
            }
        }
    }

    #[test]
    fn no_batching_takes_one_at_a_time() {
        let mut h = Harness::new(0, &[], 0);
        h.push(3, 2, 0, None);
        h.push(1, 2, 0, None);
        assert_eq!(h.take_rows(0), Ok(vec![3]));
        assert_eq!(h.take_rows(0), Ok(vec![1]));
        assert_eq!(h.take_rows(0), Err(None));
    }

    #[test]
    fn zero_delay_sends_what_is_queued() {
        let mut h = Harness::new(8, &[], 0);
        h.push(1, 2, 0, None);
        h.push(2, 2, 0, None);
        assert_eq!(h.take_rows(0), Ok(vec![1, 2]));
    }

    #[test]
    fn delay_waits_for_the_oldest_then_sends() {
        let mut h = Harness::new(8, &[], 100);
        h.push(1, 2, 10, None);
        assert_eq!(h.take_rows(20), Err(Some(110)));
        h.push(1, 2, 50, None);
        assert_eq!(h.take_rows(60), Err(Some(110)));
        assert_eq!(h.take_rows(110), Ok(vec![1, 1]));
    }

    #[test]
    fn a_full_batch_goes_at_once_and_k_rows_count_k() {
        let mut h = Harness::new(4, &[], 1_000);
        h.push(3, 2, 0, None);
        h.push(1, 2, 0, None);
        h.push(2, 2, 0, None);
        assert_eq!(h.take_rows(0), Ok(vec![3, 1]));
        // The 2-row request alone is not full: it waits for the delay.
        assert_eq!(h.take_rows(0), Err(Some(1_000)));
    }

    #[test]
    fn a_request_that_does_not_fit_closes_the_batch() {
        let mut h = Harness::new(4, &[], 1_000);
        h.push(3, 2, 0, None);
        h.push(2, 2, 0, None);
        assert_eq!(h.take_rows(0), Ok(vec![3]));
    }

    #[test]
    fn preferred_sizes_are_cut_at_once() {
        let mut h = Harness::new(8, &[2, 4], 1_000);
        for _ in 0..3 {
            h.push(1, 2, 0, None);
        }
        assert_eq!(h.take_rows(0), Ok(vec![1, 1]));
        assert_eq!(h.take_rows(0), Err(Some(1_000)));
    }

    #[test]
    fn different_row_shapes_never_share_a_batch() {
        let mut h = Harness::new(8, &[], 0);
        h.push(1, 2, 0, None);
        h.push(1, 3, 0, None);
        h.push(1, 2, 0, None);
        assert_eq!(h.take_rows(0), Ok(vec![1]));
        assert_eq!(h.take_rows(0), Ok(vec![1]));
        assert_eq!(h.take_rows(0), Ok(vec![1]));
    }

    #[test]
    fn expired_and_canceled_jobs_never_run() {
        let mut h = Harness::new(8, &[], 0);
        h.push(1, 2, 0, Some(50));
        h.push(2, 2, 0, None);
        h.push(3, 2, 0, None);
        h.receivers.remove(1); // the 2-row client goes away
        let mut dropped = Dropped::default();
        let Take::Batch(jobs) = h.queue.take(h.at(60), false, &mut dropped) else {
            panic!("a batch expected")
        };
        assert_eq!(jobs.iter().map(|j| j.rows).collect::<Vec<_>>(), vec![3]);
        assert_eq!(
            dropped,
            Dropped {
                canceled: 1,
                expired: 1
            }
        );
    }

    #[test]
    fn a_job_expired_by_its_waiter_is_skipped_not_canceled() {
        let mut h = Harness::new(8, &[], 0);
        h.push(1, 2, 0, None);
        h.queue.jobs[0].state.store(EXPIRED, Ordering::Release);
        h.receivers.clear(); // the waiter returned its timeout and dropped its receiver
        let mut dropped = Dropped::default();
        assert!(matches!(
            h.queue.take(h.at(0), false, &mut dropped),
            Take::Empty
        ));
        assert_eq!(
            dropped,
            Dropped {
                canceled: 0,
                expired: 1
            }
        );
    }
}
