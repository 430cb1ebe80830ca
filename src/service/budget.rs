//! The bytes that request bodies, gRPC messages and unread answers may hold at once, across
//! every connection of both front ends (`max_buffered_body_bytes`). A payload that would pass
//! the bound is refused at once with 503 (gRPC: UNAVAILABLE) instead of waiting, so stalled
//! uploads never pile up memory; answers made and not yet written by their client are counted
//! from the same bound (`listener::answers`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ApiError;
use crate::metrics::Metrics;

/// The bytes all request bodies may hold at once, shared by every connection.
pub struct BodyBudget {
    used: AtomicUsize,
    /// The part of `used` that is unread answers.
    answers: AtomicUsize,
    limit: usize,
    metrics: Metrics,
}

/// A share of the [`BodyBudget`], held while the bytes it counts are alive and returned on drop.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize, metrics: Metrics) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            answers: AtomicUsize::new(0),
            limit,
            metrics,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty share, grown as bytes arrive.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|&n| n <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.metrics.add_buffered_body_bytes(bytes as i64);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics.add_buffered_body_bytes(-(bytes as i64));
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether new work that would add answers should wait: everything the budget allows is
    /// held, or unread answers hold half of it. Answers are made before they can be refused, so
    /// they are held to half, which leaves request bodies (a well-behaved client's included)
    /// the other half however many clients stop reading.
    pub fn spent(&self) -> bool {
        self.used() >= self.limit || self.answers.load(Ordering::Relaxed) >= self.limit / 2
    }

    /// Counts answer bytes produced and not yet written. An answer already made is counted even
    /// past the limit (it exists either way); [`BodyBudget::spent`] then refuses new requests
    /// that would make more.
    pub fn add_answer(&self, bytes: usize) {
        self.answers.fetch_add(bytes, Ordering::AcqRel);
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.metrics.add_unread_answer_bytes(bytes as i64);
    }

    /// Gives back answer bytes written (or never to be written).
    pub fn remove_answer(&self, bytes: usize) {
        self.answers.fetch_sub(bytes, Ordering::AcqRel);
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics.add_unread_answer_bytes(-(bytes as i64));
    }

    fn busy(&self) -> ApiError {
        ApiError::Busy(format!(
            "the server holds its limit of {} bytes of request bodies (max_buffered_body_bytes); \
             retry later",
            self.limit
        ))
    }
}

impl Reservation {
    /// Grows the share by `bytes`, or answers 503 when the budget is spent.
    pub fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        if self.budget.take(bytes) {
            self.bytes += bytes;
            Ok(())
        } else {
            Err(self.budget.busy())
        }
    }

    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}
