//! The server's background loops (the rollout evaluator, the repository poller, the retraining
//! policy, the shared deployment state, GPU telemetry, TLS reloads) all have one shape: do a
//! step every period until the server stops. It is written once here, so each loop says only
//! what its step is.
//!
//! A step is never cut short by the stop: the loop returns at the next look. A step slower than
//! the period delays the next one instead of running it twice (`MissedTickBehavior::Delay`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// When a loop takes its first step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// At once.
    Now,
    /// One period after the start.
    AfterPeriod,
}

/// Runs `step` every `period` until `stop` turns true.
pub async fn every<F, Fut>(
    period: Duration,
    first: First,
    mut stop: watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    if first == First::AfterPeriod {
        // An interval's first tick is immediate.
        tick.tick().await;
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        step().await;
    }
}

/// As [`every`], for a step that blocks (file system, a lock held across a write): each runs on
/// the blocking pool, never on a runtime worker.
pub async fn every_blocking<F>(period: Duration, first: First, stop: watch::Receiver<bool>, step: F)
where
    F: Fn() + Clone + Send + 'static,
{
    every(period, first, stop, move || {
        let step = step.clone();
        async move {
            if let Err(e) = tokio::task::spawn_blocking(step).await {
                tracing::error!(error = %e, "a periodic step failed");
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn steps_until_stopped_and_not_after() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&steps);
        let looping = tokio::spawn(every(
            Duration::from_millis(10),
            First::Now,
            stop_rx,
            move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            },
        ));
        while steps.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), looping)
            .await
            .expect("the loop returns once stopped")
            .unwrap();
        let at_stop = steps.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(steps.load(Ordering::SeqCst), at_stop);
    }

    #[tokio::test]
    async fn the_first_step_waits_a_period_when_asked() {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&steps);
        let looping = tokio::spawn(every_blocking(
            Duration::from_secs(3600),
            First::AfterPeriod,
            stop_rx,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 0);
        looping.abort();

        let (_stop_tx, stop_rx) = watch::channel(false);
        let counted = Arc::clone(&steps);
        let looping = tokio::spawn(every_blocking(
            Duration::from_secs(3600),
            First::Now,
            stop_rx,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        while steps.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        looping.abort();
    }
}
