//! Leases in the object store the replicas share (`deployment_state`): one replica at a time
//! holds a name (a model's retraining), so that N replicas watching the same drift start one
//! job, not N.
//!
//! A lease is `<prefix>/leases/<name>.json`: its holder (`replica_id`), a generation that grows
//! each time the lease changes hands, and the time it expires. It is taken with a conditional
//! create, renewed and taken over with a conditional put on the ETag read, so two replicas
//! racing never both hold it: the loser's put fails and it reads who won. A holder renews it
//! before half its time is gone; one that cannot (store unreachable, process stopped) loses it
//! at expiry and another replica takes it over with the next generation. Expiry is judged on
//! each replica's own clock: clocks must agree to well within the lease's time (30 s).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, UpdateVersion};
use serde::{Deserialize, Serialize};

/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(30);

/// A lease object is a few dozen bytes; anything this large is not ours.
const MAX_LEASE_BYTES: u64 = 64 << 10;

/// The longest a lease's read or write may take, whatever the store's own client does (a
/// local or in-memory store has no timeout of its own).
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub holder: String,
    pub generation: u64,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// Who holds a lease after a look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// This replica, until `expires_ms`.
    Here(Record),
    /// Another replica.
    Elsewhere(Record),
}

/// The leases of one replica.
pub struct Leases {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
    holder: String,
    ttl: Duration,
}

impl Leases {
    /// Leases under `url` (the shared deployment-state prefix), held as `holder`.
    pub fn open(url: &str, holder: &str) -> Result<Leases, String> {
        let (store, prefix) =
            crate::store::open(url, "30s").map_err(|e| format!("'{url}': {e}"))?;
        Ok(Self::with_store(store, prefix, url, holder, TTL))
    }

    /// Over a given store (tests: an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        url: &str,
        holder: &str,
        ttl: Duration,
    ) -> Leases {
        Leases {
            store,
            prefix: prefix.child("leases"),
            url: format!("{}/leases", url.trim_end_matches('/')),
            holder: holder.to_string(),
            ttl,
        }
    }

    /// This replica's name in the leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease on `name` if it is free or expired, renews it if this replica holds it,
    /// and otherwise says who does. `now_ms`: milliseconds since the Unix epoch.
    pub async fn acquire(&self, name: &str, now_ms: u64) -> Result<Held, String> {
        let path = self.prefix.child(format!("{name}.json"));
        let expires_ms = now_ms + self.ttl.as_millis() as u64;
        let (record, expected) = match self.read(&path).await? {
            None => (
                Record {
                    holder: self.holder.clone(),
                    generation: 1,
                    expires_ms,
                },
                None,
            ),
            Some((current, version)) => {
                if current.holder != self.holder && current.expires_ms > now_ms {
                    return Ok(Held::Elsewhere(current));
                }
                let generation = if current.holder == self.holder {
                    current.generation
                } else {
                    current.generation + 1
                };
                (
                    Record {
                        holder: self.holder.clone(),
                        generation,
                        expires_ms,
                    },
                    Some(version),
                )
            }
        };
        if self.put(&path, &record, expected).await? {
            return Ok(Held::Here(record));
        }
        // Another replica wrote first: whoever it is holds the lease now.
        match self.read(&path).await? {
            Some((winner, _)) if winner.holder == self.holder => Ok(Held::Here(winner)),
            Some((winner, _)) => Ok(Held::Elsewhere(winner)),
            None => Err(format!(
                "{}/{name}.json: a conditional write failed and the lease is gone",
                self.url
            )),
        }
    }

    /// Whether this replica still holds the lease on `name` in `generation`, renewing it (a
    /// conditional put on the version just read): what a training job asks before each step of
    /// its publish, so that a holder that lost its lease, even if it has taken it again since (a
    /// later generation: another replica may have held it between), publishes nothing. The
    /// renewed lease when it does (no other replica can take it before its `expires_ms`, clocks
    /// agreeing); the reason when not.
    pub async fn confirm(
        &self,
        name: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<Record, String> {
        match self.acquire(name, now_ms).await? {
            Held::Here(r) if r.generation == generation => Ok(r),
            Held::Here(r) => Err(format!(
                "the retraining lease on '{name}' was lost since the job started (generation \
                 {generation}, now {}): another replica may have trained meanwhile",
                r.generation
            )),
            Held::Elsewhere(r) => Err(format!(
                "the retraining lease on '{name}' is held by '{}' (generation {}) since the job \
                 started",
                r.holder, r.generation
            )),
        }
    }

    async fn read(&self, path: &StorePath) -> Result<Option<(Record, UpdateVersion)>, String> {
        let read = crate::store::read_versioned(self.store.as_ref(), path, MAX_LEASE_BYTES);
        let Some((bytes, version)) = tokio::time::timeout(STORE_CALL_TIMEOUT, read)
            .await
            .map_err(|_| {
                format!("cannot read {path}: no answer within {STORE_CALL_TIMEOUT:?}")
            })??
        else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the lease {path} is not a lease: {e}"))?;
        Ok(Some((record, version)))
    }

    /// Writes `record` if the store still holds `expected` (`None`: nothing); false when
    /// another replica wrote first.
    async fn put(
        &self,
        path: &StorePath,
        record: &Record,
        expected: Option<UpdateVersion>,
    ) -> Result<bool, String> {
        let body = serde_json::to_vec(record).expect("a lease serializes");
        let write = crate::store::write_if(self.store.as_ref(), path, body, expected);
        tokio::time::timeout(STORE_CALL_TIMEOUT, write)
            .await
            .map_err(|_| format!("cannot write {path}: no answer within {STORE_CALL_TIMEOUT:?}"))?
            .map(|written| written.is_some())
    }
}

/// A training job's hold on its model's lease, in the generation it started with: what a
/// publish carries so that it can refuse itself once the lease was lost. Each `confirm` renews
/// the lease with a conditional put on the version it read, so it fails once another replica
/// took the lease over, even if this one took it back since.
#[derive(Clone)]
pub struct Fence {
    leases: Arc<Leases>,
    name: String,
    generation: u64,
}

impl Fence {
    pub fn new(leases: Arc<Leases>, name: &str, generation: u64) -> Fence {
        Fence {
            leases,
            name: name.to_string(),
            generation,
        }
    }

    /// This replica's name in the leases.
    pub fn holder(&self) -> &str {
        self.leases.holder()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Renews the lease if this replica still holds it in the fence's generation: until the
    /// returned time (milliseconds since the Unix epoch) no other replica can take it. The
    /// reason when it does not hold it.
    pub async fn confirm(&self) -> Result<u64, String> {
        let record = self
            .leases
            .confirm(&self.name, self.generation, now_ms())
            .await?;
        Ok(record.expires_ms)
    }
}

/// Milliseconds since the Unix epoch, as leases count.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This process's replica name when `replica_id` is unset: the host name (a pod's name in
/// Kubernetes), else `cairn`.
pub fn default_replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cairn".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn pair() -> (Leases, Leases) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = StorePath::from("state");
        let ttl = Duration::from_secs(30);
        (
            Leases::with_store(Arc::clone(&store), prefix.clone(), "mem://state", "a", ttl),
            Leases::with_store(store, prefix, "mem://state", "b", ttl),
        )
    }

    /// A job started under generation 1 may publish while its replica still holds that
    /// generation; not once another replica has taken the lease, nor after taking it back.
    #[tokio::test]
    async fn a_holder_that_lost_its_lease_cannot_confirm_it() {
        let (a, b) = pair();
        let t = 1_000_000;
        let Held::Here(started) = a.acquire("iris", t).await.unwrap() else {
            panic!("a free lease is taken")
        };
        a.confirm("iris", started.generation, t + 10_000)
            .await
            .unwrap();
        // a stops renewing; b takes over after expiry.
        let late = t + 10_000 + 31_000;
        assert!(matches!(
            b.acquire("iris", late).await.unwrap(),
            Held::Here(_)
        ));
        let e = a
            .confirm("iris", started.generation, late + 1)
            .await
            .unwrap_err();
        assert!(e.contains("held by 'b' (generation 2)"), "{e}");
        // b's lease expires and a takes it again: a later generation, still refused.
        let later = late + 31_000;
        assert!(matches!(
            a.acquire("iris", later).await.unwrap(),
            Held::Here(_)
        ));
        let e = a
            .confirm("iris", started.generation, later + 1)
            .await
            .unwrap_err();
        assert!(e.contains("generation 1, now 3"), "{e}");
    }

    #[tokio::test]
    async fn one_holder_renews_the_other_waits_then_takes_over_at_expiry() {
        let (a, b) = pair();
        let t = 1_000_000;
        let Held::Here(first) = a.acquire("iris", t).await.unwrap() else {
            panic!("a free lease is taken")
        };
        assert_eq!((first.generation, first.expires_ms), (1, t + 30_000));
        // b sees a's lease until it expires.
        match b.acquire("iris", t + 10_000).await.unwrap() {
            Held::Elsewhere(r) => assert_eq!(r.holder, "a"),
            other => panic!("{other:?}"),
        }
        // a renews: same generation, later expiry.
        let Held::Here(renewed) = a.acquire("iris", t + 20_000).await.unwrap() else {
            panic!("the holder renews")
        };
        assert_eq!((renewed.generation, renewed.expires_ms), (1, t + 50_000));
        assert!(matches!(
            b.acquire("iris", t + 49_999).await.unwrap(),
            Held::Elsewhere(_)
        ));
        // a stopped renewing: at expiry b takes over with the next generation.
        let Held::Here(taken) = b.acquire("iris", t + 50_000).await.unwrap() else {
            panic!("an expired lease is taken over")
        };
        assert_eq!((taken.holder.as_str(), taken.generation), ("b", 2));
        assert!(matches!(
            a.acquire("iris", t + 50_001).await.unwrap(),
            Held::Elsewhere(r) if r.holder == "b"
        ));
        // Leases are per name.
        assert!(matches!(a.acquire("wine", t).await.unwrap(), Held::Here(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_replicas_never_both_hold_a_lease() {
        for round in 0..50u64 {
            let (a, b) = pair();
            let name = format!("m{round}");
            let (na, nb) = (name.clone(), name);
            let ta = tokio::spawn(async move { a.acquire(&na, 1_000).await });
            let tb = tokio::spawn(async move { b.acquire(&nb, 1_000).await });
            let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
            let here = [ra.unwrap(), rb.unwrap()]
                .into_iter()
                .filter(|h| matches!(h, Held::Here(_)))
                .count();
            assert_eq!(here, 1, "round {round}");
        }
    }
}
