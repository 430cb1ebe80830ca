//! Trials judged on every replica's counts. Behind a Service each replica sees its share of a
//! trial's requests and of its labels, so a decision taken on one replica's counts judges a
//! fraction of the evidence, and N replicas judging apart multiply the chances of a wrong call.
//! With a shared deployment state, each replica publishes its counts of every trial in progress
//! (`<state>/rollout/trials/<model>/<version>-<start ms>/<replica>.json`: a folder per trial, so
//! that a look lists only the trial's own replicas, however many ended trials and replaced pods
//! left theirs) at each look, reads the others', and one replica per model, the holder of the
//! model's rollout lease (`<state>/rollout/leases/<model>.json`, see `lease`), decides on their
//! sum; the decision reaches the others through the shared deployment state. The others wait
//! (their status names the holder). A trial is the same on every replica when its version and
//! start are: the start travels with the candidate in the shared state.
//!
//! What the sum can miss: counts a replica made since its last publish (one look, a few
//! seconds), and those of a replica restarted during the trial (its counts start over, and its
//! file is overwritten with them). Both only lower the evidence; neither counts a row twice.
//! Replicas that put the same candidate on by themselves (a version arriving through the store)
//! adopt the start the shared state holds (`Rollout::adopt_trial_starts`) and keep what they
//! counted since their own: requests routed to the candidate a moment before the adopted start
//! count, labels arriving later for them do not (they were answered before the trial's start).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::lease::{Held, Leases};
use crate::routing::TrialCounts;

/// A replica's counts are a few kilobytes (two latency histograms); anything this large is not
/// ours.
const MAX_COUNTS_BYTES: u64 = 256 << 10;

/// Replicas whose counts are read per trial (the shipped manifests run at most 10; more names
/// only where pods were replaced during the trial); beyond, the rest are left out of the sum.
const MAX_REPLICAS: usize = 64;

/// The decider decides only while its lease has at least this long to run: a lease about to
/// expire may already be another replica's by the time the decision is written.
const DECIDE_MARGIN_MS: u64 = 5_000;

/// The longest one read, write or listing may take.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What a replica publishes of one trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub replica: String,
    pub version: u64,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub counts: TrialCounts,
}

/// A trial in progress here.
#[derive(Clone, Debug)]
pub struct LocalTrial {
    pub model: String,
    pub version: u64,
    pub started_ms: u64,
    pub counts: TrialCounts,
}

/// Who decides a model's trial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decider {
    /// This replica, while its lease lasts (until `expires_ms`, less a margin).
    Here {
        expires_ms: u64,
    },
    Elsewhere(String),
    /// The lease could not be read at the last look: nobody here decides until it can.
    Unknown(String),
}

/// What the last look found of one model's trial on the other replicas.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: u64,
    pub started_ms: u64,
    /// The other replicas' counts of this trial, summed.
    pub others: TrialCounts,
    /// Every replica with counts of this trial, this one included, sorted.
    pub replicas: Vec<String>,
    pub decider: Decider,
}

pub struct SharedTrials {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
    replica: String,
    leases: Leases,
    seen: parking_lot::Mutex<BTreeMap<String, Seen>>,
}

impl SharedTrials {
    /// Trials shared under `url` (the deployment-state prefix), as replica `replica`.
    pub fn open(url: &str, replica: &str) -> Result<SharedTrials, String> {
        let (store, prefix) =
            crate::store::open(url, "20s").map_err(|e| format!("'{url}': {e}"))?;
        Ok(Self::with_store(store, prefix, url, replica))
    }

    /// Over a given store (tests: an in-memory one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        url: &str,
        replica: &str,
    ) -> SharedTrials {
        let url = format!("{}/rollout", url.trim_end_matches('/'));
        let prefix = prefix.child("rollout");
        SharedTrials {
            leases: Leases::with_store(
                Arc::clone(&store),
                prefix.clone(),
                &url,
                replica,
                crate::lease::TTL,
            ),
            store,
            prefix: prefix.child("trials"),
            url,
            replica: replica.to_string(),
            seen: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this replica decides `model`'s trial at `now_ms`: it held the lease at the last
    /// look, and the lease has more than a margin to run.
    pub fn decides(seen: &Seen, now_ms: u64) -> bool {
        matches!(seen.decider, Decider::Here { expires_ms } if now_ms + DECIDE_MARGIN_MS < expires_ms)
    }

    /// What the last look found of `model`'s trial, if it is the trial of `version` started
    /// at `started_ms`.
    pub fn seen(&self, model: &str, version: u64, started_ms: u64) -> Option<Seen> {
        self.seen
            .lock()
            .get(model)
            .filter(|s| s.version == version && s.started_ms == started_ms)
            .cloned()
    }

    /// One look: publishes this replica's counts of each trial in `trials`, reads the other
    /// replicas' counts of the same trials and takes (or renews, or learns the holder of) each
    /// model's rollout lease. Models with no trial here are forgotten. A model whose look
    /// failed keeps no decider: its trial waits until a look succeeds.
    pub async fn look(&self, trials: Vec<LocalTrial>, now_ms: u64) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        let mut failed = Vec::new();
        for trial in trials {
            match self.look_at(&trial, now_ms).await {
                Ok(s) => {
                    seen.insert(trial.model, s);
                }
                Err(e) => {
                    failed.push(format!("{}: {e}", trial.model));
                    seen.insert(
                        trial.model.clone(),
                        Seen {
                            version: trial.version,
                            started_ms: trial.started_ms,
                            others: TrialCounts::default(),
                            replicas: vec![self.replica.clone()],
                            decider: Decider::Unknown(e),
                        },
                    );
                }
            }
        }
        *self.seen.lock() = seen;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    async fn look_at(&self, trial: &LocalTrial, now_ms: u64) -> Result<Seen, String> {
        let dir = self
            .prefix
            .child(trial.model.as_str())
            .child(format!("{}-{}", trial.version, trial.started_ms));
        let mine = Published {
            replica: self.replica.clone(),
            version: trial.version,
            started_ms: trial.started_ms,
            updated_ms: now_ms,
            counts: trial.counts.clone(),
        };
        let body = serde_json::to_vec(&mine).expect("counts serialize");
        let path = dir.child(format!("{}.json", self.replica));
        timed(self.store.put(&path, PutPayload::from(body)))
            .await?
            .map_err(|e| format!("cannot write {}/{}: {e}", self.url, path))?;

        let mut listed = Vec::new();
        let mut list = self.store.list(Some(&dir));
        loop {
            match timed(list.next()).await? {
                None => break,
                Some(Ok(meta)) => listed.push(meta),
                Some(Err(e)) => return Err(format!("cannot list {}/{dir}: {e}", self.url)),
            }
        }
        // The most recently written first: beyond the limit, the longest silent are left out.
        listed.sort_by_key(|m| std::cmp::Reverse(m.last_modified));
        if listed.len() > MAX_REPLICAS {
            tracing::warn!(trial = %dir, files = listed.len(),
                "more replicas' counts of one trial than are read; the oldest are left out");
            listed.truncate(MAX_REPLICAS);
        }
        let mut others = TrialCounts::default();
        let mut replicas = vec![self.replica.clone()];
        for meta in listed {
            if meta.location == path || meta.size > MAX_COUNTS_BYTES {
                continue;
            }
            // Under the size limit whatever the listing said: the object may be replaced.
            let got = timed(crate::store::read_versioned(
                self.store.as_ref(),
                &meta.location,
                MAX_COUNTS_BYTES,
            ))
            .await??;
            // Gone between the listing and the read: a replica cleaning up.
            let Some((bytes, _)) = got else { continue };
            let Ok(theirs) = serde_json::from_slice::<Published>(&bytes) else {
                tracing::warn!(object = %meta.location, "not a replica's trial counts; skipped");
                continue;
            };
            // Another trial (an earlier candidate, or one this replica has not seen yet).
            if theirs.version != trial.version || theirs.started_ms != trial.started_ms {
                continue;
            }
            others.add(&theirs.counts);
            replicas.push(theirs.replica);
        }
        replicas.sort();
        replicas.dedup();
        let decider = match self.leases.acquire(&trial.model, now_ms).await? {
            Held::Here(r) => Decider::Here {
                expires_ms: r.expires_ms,
            },
            Held::Elsewhere(r) => Decider::Elsewhere(r.holder),
        };
        Ok(Seen {
            version: trial.version,
            started_ms: trial.started_ms,
            others,
            replicas,
            decider,
        })
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    crate::store::within(STORE_CALL_TIMEOUT, f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn counts(labelled: u64, correct: u64) -> TrialCounts {
        let mut c = TrialCounts::default();
        c.candidate.labelled = labelled;
        c.candidate.correct = correct;
        c.candidate.requests = labelled;
        c.candidate.latency = vec![0, labelled];
        c
    }

    fn trial(version: u64, started_ms: u64, c: TrialCounts) -> LocalTrial {
        LocalTrial {
            model: "m".into(),
            version,
            started_ms,
            counts: c,
        }
    }

    /// Three replicas: each sums the other two's counts of the same trial; one decides, the
    /// others name it; counts of another trial are left out.
    #[tokio::test]
    async fn each_replica_sums_the_others_and_one_decides() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let open = |r: &str| {
            SharedTrials::with_store(Arc::clone(&store), StorePath::from("state"), "mem://", r)
        };
        let (a, b, c) = (open("a"), open("b"), open("c"));
        a.look(vec![trial(2, 100, counts(10, 9))], 1_000)
            .await
            .unwrap();
        b.look(vec![trial(2, 100, counts(20, 15))], 1_000)
            .await
            .unwrap();
        // c runs an older trial of the same model.
        c.look(vec![trial(2, 50, counts(1000, 0))], 1_000)
            .await
            .unwrap();
        a.look(vec![trial(2, 100, counts(11, 10))], 2_000)
            .await
            .unwrap();
        let seen = a.seen("m", 2, 100).unwrap();
        assert_eq!(seen.others.candidate.labelled, 20);
        assert_eq!(seen.others.candidate.correct, 15);
        assert_eq!(seen.others.candidate.latency, vec![0, 20]);
        assert_eq!(seen.replicas, vec!["a", "b"]);
        assert!(matches!(seen.decider, Decider::Here { .. }));
        assert!(SharedTrials::decides(&seen, 2_000));
        // Past its lease, less the margin, the holder no longer decides on what it saw.
        let expires = 2_000 + crate::lease::TTL.as_millis() as u64;
        assert!(!SharedTrials::decides(&seen, expires - DECIDE_MARGIN_MS));
        b.look(vec![trial(2, 100, counts(21, 16))], 2_000)
            .await
            .unwrap();
        let seen = b.seen("m", 2, 100).unwrap();
        assert_eq!(seen.others.candidate.labelled, 11);
        assert_eq!(seen.decider, Decider::Elsewhere("a".into()));
        // Another trial is not what was seen.
        assert!(b.seen("m", 2, 101).is_none());
        assert!(b.seen("m", 3, 100).is_none());
        // A look with no trial forgets the model.
        b.look(Vec::new(), 3_000).await.unwrap();
        assert!(b.seen("m", 2, 100).is_none());
    }

    /// The holder stops looking (killed): once its lease expires another replica decides.
    #[tokio::test]
    async fn a_silent_decider_is_replaced_after_its_lease_expires() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let open = |r: &str| {
            SharedTrials::with_store(Arc::clone(&store), StorePath::from("state"), "mem://", r)
        };
        let (a, b) = (open("a"), open("b"));
        a.look(vec![trial(2, 100, counts(1, 1))], 1_000)
            .await
            .unwrap();
        b.look(vec![trial(2, 100, counts(1, 1))], 2_000)
            .await
            .unwrap();
        assert_eq!(
            b.seen("m", 2, 100).unwrap().decider,
            Decider::Elsewhere("a".into())
        );
        let later = 1_000 + crate::lease::TTL.as_millis() as u64 + 1;
        b.look(vec![trial(2, 100, counts(2, 2))], later)
            .await
            .unwrap();
        let seen = b.seen("m", 2, 100).unwrap();
        assert!(matches!(seen.decider, Decider::Here { .. }));
        // a's counts of the trial still count: they are evidence, whoever decides.
        assert_eq!(seen.others.candidate.labelled, 1);
    }
}
