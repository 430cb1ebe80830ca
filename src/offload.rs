//! The share of tokio's blocking pool that request-path work may hold at once: decoding and
//! encoding large bodies, inflating compressed ones, comparing large shadow outputs. Work beyond
//! the share is refused at once (the caller answers 503) instead of queueing without bound
//! behind the pool's threads; model loads and state-file writes, which are few, do not count.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Payloads (request bodies, gRPC messages, answers) larger than this are decoded or encoded
/// here rather than inline, so one huge request cannot stall the other connections served by
/// the same runtime worker. Below it, the hand-off would cost more than the work.
pub const INLINE_LIMIT: usize = 256 << 10;

/// Permits for request-path blocking work.
#[derive(Clone)]
pub struct Offload {
    slots: Arc<Semaphore>,
    total: usize,
}

/// Why offloaded work did not run.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("the server is busy with {0} large requests already; retry later")]
    Busy(usize),
    #[error("offloaded work stopped: {0}")]
    Stopped(String),
}

impl Offload {
    /// `slots` tasks at once; the default is two per CPU, at least four.
    pub fn new(slots: usize) -> Offload {
        Offload {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            total: slots.max(1),
        }
    }

    pub fn with_default_slots() -> Offload {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Offload::new((2 * cpus).max(4))
    }

    /// Runs `f` on the blocking pool if a slot is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T, OffloadError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| OffloadError::Busy(self.total))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| OffloadError::Stopped(e.to_string()))
    }

    /// Whether a slot is free now (for work that is skipped rather than refused).
    pub fn try_spawn<F>(&self, f: F) -> bool
    where
        F: FnOnce() + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_beyond_the_slots_is_refused_at_once() {
        let offload = Offload::new(1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = {
            let offload = offload.clone();
            tokio::spawn(async move { offload.run(move || rx.recv().unwrap()).await })
        };
        // Wait until the first task holds the slot.
        while offload.slots.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            offload.run(|| ()).await,
            Err(OffloadError::Busy(_))
        ));
        assert!(!offload.try_spawn(|| ()));
        tx.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(offload.run(|| 7).await.unwrap(), 7);
    }
}
