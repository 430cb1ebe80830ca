//! Feedback across replicas. Behind a Service, the label of a request answered by replica A
//! often reaches replica B, whose index does not hold A's prediction. With a shared deployment
//! state, B stores such feedback in its own log as always (so the offline join over every
//! replica's log finds it) and relays it: each second it writes what it could not match as one
//! small object, `<state>/feedback/<model>/<ms>-<replica>-<seq>.json`, and every replica reads
//! the others' new objects and matches them against its own recent predictions, without
//! storing them again. The replica that answered a row so counts its label into live quality,
//! the retraining policy's labelled rows and the trial of its arm (which `rollout::trials` sums
//! over replicas).
//!
//! The horizon: a relayed object lives [`HORIZON`] (its writer deletes it after that), so a
//! label reaches the answering replica if it arrives there within that time and while that
//! replica's feedback index still holds the row (`feedback_index_rows`). Feedback no replica
//! matched is still in the log of the replica that received it; the offline join decides it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_monitor::feedback::FeedbackItem;
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use serde::Serialize;

use super::MonitorHub;
use crate::metrics::Metrics;
use crate::routing::Router;

/// How long a relayed object is kept, and read.
pub const HORIZON: Duration = Duration::from_secs(600);

/// How often feedback is relayed and the others' read.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Items waiting to be relayed, over all models; beyond, feedback is still stored here but not
/// relayed (counted, and answered as unknown).
const MAX_WAITING: usize = 100_000;

/// The largest relayed object read: one second of one replica's unmatched feedback.
const MAX_OBJECT_BYTES: u64 = 32 << 20;

/// Objects read per model and look; the rest wait for the next look.
const MAX_READS_PER_LOOK: usize = 256;

/// Objects older than the newest seen by this much are still listed: writers' clocks and
/// uploads are not in step.
const LIST_SLACK: Duration = Duration::from_secs(60);

const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Items per relayed object: at the feedback API's limits (ids of 1 KiB, labels of 256 bytes)
/// an object stays well under [`MAX_OBJECT_BYTES`].
const ITEMS_PER_OBJECT: usize = 10_000;

/// One relayed label, as the feedback API takes it (`time` in seconds).
#[derive(Serialize)]
struct Relayed<'a> {
    id: &'a str,
    row: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<f64>,
}

pub struct Relay {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    replica: String,
    metrics: Metrics,
    waiting: parking_lot::Mutex<Waiting>,
    seq: AtomicU64,
    /// This replica's objects, oldest first, to delete after the horizon.
    written: parking_lot::Mutex<VecDeque<(u64, StorePath)>>,
    /// Per model: the others' objects read, by name, with their time.
    read: parking_lot::Mutex<HashMap<String, BTreeMap<String, u64>>>,
    /// Per model: when this replica last listed its objects (its own clock).
    last_look: parking_lot::Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct Waiting {
    items: usize,
    models: BTreeMap<String, Vec<FeedbackItem>>,
}

impl Relay {
    /// Relays under `url` (the deployment-state prefix), as replica `replica`.
    pub fn open(url: &str, replica: &str, metrics: Metrics) -> Result<Relay, String> {
        let (store, prefix) =
            crate::store::open(url, "20s").map_err(|e| format!("'{url}': {e}"))?;
        Ok(Self::with_store(store, prefix, replica, metrics))
    }

    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        replica: &str,
        metrics: Metrics,
    ) -> Relay {
        Relay {
            store,
            prefix: prefix.child("feedback"),
            replica: replica.to_string(),
            metrics,
            waiting: parking_lot::Mutex::new(Waiting::default()),
            seq: AtomicU64::new(0),
            written: parking_lot::Mutex::new(VecDeque::new()),
            read: parking_lot::Mutex::new(HashMap::new()),
            last_look: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Queues `items` (already stored here) for the other replicas; how many were taken (the
    /// rest: the queue is full).
    pub fn offer(&self, model: &str, items: Vec<FeedbackItem>) -> usize {
        let mut w = self.waiting.lock();
        let room = MAX_WAITING.saturating_sub(w.items);
        let take = items.len().min(room);
        if take < items.len() {
            self.metrics
                .record_feedback(model, "relay_dropped", (items.len() - take) as u64);
        }
        w.items += take;
        w.models
            .entry(model.to_string())
            .or_default()
            .extend(items.into_iter().take(take));
        take
    }

    /// Relays and reads every `PERIOD` until `stop`.
    pub async fn run(
        self: Arc<Self>,
        monitors: Arc<MonitorHub>,
        router: Arc<Router>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let me = &self;
        let (monitors, router) = (&monitors, &router);
        crate::periodic::every(PERIOD, crate::periodic::First::Now, stop, || async move {
            if let Err(e) = me.step(monitors, router, crate::lease::now_ms()).await {
                tracing::warn!(error = %e, "feedback relay: the next look retries");
            }
        })
        .await
    }

    /// One look: writes what waits, reads the others' new objects into the monitors, deletes
    /// this replica's objects past the horizon.
    pub async fn step(
        &self,
        monitors: &MonitorHub,
        router: &Router,
        now_ms: u64,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Err(e) = self.write_waiting(now_ms).await {
            errors.push(e);
        }
        for model in monitors.models() {
            let Some(monitor) = monitors.get(&model) else {
                continue;
            };
            match self.read_new(&model, now_ms).await {
                Ok((items, _)) if items.is_empty() => {}
                // Marked read only once the monitor took them: otherwise read again next look.
                Ok((items, read)) => match monitor.relayed_feedback(items).await {
                    Ok(answer) => {
                        self.mark_read(&model, read);
                        crate::routing::record_trial_labels(router, &model, &answer.outcomes)
                    }
                    Err(e) => errors.push(format!("{model}: {e}")),
                },
                Err(e) => errors.push(e),
            }
        }
        self.expire(now_ms).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn write_waiting(&self, now_ms: u64) -> Result<(), String> {
        let models = {
            let mut w = self.waiting.lock();
            w.items = 0;
            std::mem::take(&mut w.models)
        };
        let mut models = models.into_iter();
        while let Some((model, mut items)) = models.next() {
            while !items.is_empty() {
                let chunk: Vec<FeedbackItem> =
                    items.drain(..items.len().min(ITEMS_PER_OBJECT)).collect();
                if let Err(reason) = self.write_object(&model, &chunk, now_ms).await {
                    // This chunk, the rest of this model's and the models not tried yet wait
                    // for the next look.
                    self.offer(&model, chunk);
                    self.offer(&model, items);
                    for (rest, items) in models {
                        self.offer(&rest, items);
                    }
                    return Err(format!("cannot relay feedback of '{model}': {reason}"));
                }
                self.metrics
                    .record_feedback(&model, "relayed", chunk.len() as u64);
            }
        }
        Ok(())
    }

    /// One object of relayed feedback, in the feedback API's own body format, so that reading
    /// it back goes through the API's decoder and its limits.
    async fn write_object(
        &self,
        model: &str,
        items: &[FeedbackItem],
        now_ms: u64,
    ) -> Result<(), String> {
        let body: Vec<Relayed> = items
            .iter()
            .map(|i| Relayed {
                id: &i.id,
                row: i.row,
                label: i.label.as_deref(),
                target: i.target,
                time: i.time_us.map(|us| us as f64 / 1e6),
            })
            .collect();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .prefix
            .child(model)
            .child(format!("{now_ms:013}-{}-{seq:06}.json", self.replica));
        let bytes = serde_json::to_vec(&body).expect("feedback serializes");
        timed(self.store.put(&path, PutPayload::from(bytes)))
            .await?
            .map_err(|e| e.to_string())?;
        self.written.lock().push_back((now_ms, path));
        Ok(())
    }

    /// The other replicas' objects of `model` not read yet, within the horizon, as items, with
    /// the objects they came from (marked read once the items are taken).
    async fn read_new(
        &self,
        model: &str,
        now_ms: u64,
    ) -> Result<(Vec<FeedbackItem>, Vec<(String, u64)>), String> {
        let dir = self.prefix.child(model);
        let horizon_ms = now_ms.saturating_sub(HORIZON.as_millis() as u64);
        // Listed from this replica's own clock, never from a time in a name: one object named
        // in the future (a writer whose clock runs fast) must not hide everybody else's.
        let from_ms = {
            let mut last = self.last_look.lock();
            let from = last.get(model).map_or(horizon_ms, |prev| {
                prev.saturating_sub(LIST_SLACK.as_millis() as u64)
                    .max(horizon_ms)
            });
            last.insert(model.to_string(), now_ms);
            from
        };
        let future_ms = now_ms + LIST_SLACK.as_millis() as u64;
        let offset = dir.child(format!("{from_ms:013}"));
        let mut list = self.store.list_with_offset(Some(&dir), &offset);
        let mut new = Vec::new();
        loop {
            let meta = match timed(list.next()).await? {
                None => break,
                Some(Ok(meta)) => meta,
                Some(Err(e)) => return Err(format!("cannot list {dir}: {e}")),
            };
            let Some(name) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            let Some((ms, replica)) = parse_name(&name) else {
                continue;
            };
            // Named beyond this replica's clock and slack: read once the clock gets there.
            if replica == self.replica
                || ms < horizon_ms
                || ms > future_ms
                || meta.size > MAX_OBJECT_BYTES
            {
                continue;
            }
            if self
                .read
                .lock()
                .get(model)
                .is_some_and(|seen| seen.contains_key(&name))
            {
                continue;
            }
            new.push((name, ms, meta.location));
            if new.len() >= MAX_READS_PER_LOOK {
                break;
            }
        }
        let mut items = Vec::new();
        let mut read = Vec::new();
        for (name, ms, location) in new {
            // Read under the size limit whatever the listing said (an object may be replaced
            // meanwhile), and decoded by the feedback API's own decoder: every item within its
            // limits (items, id and label sizes, time range), as if a caller had sent it.
            let got = timed(crate::store::read_versioned(
                self.store.as_ref(),
                &location,
                MAX_OBJECT_BYTES,
            ))
            .await??;
            // `None`: deleted by its writer after the horizon, since the listing.
            if let Some((bytes, _)) = got {
                match crate::protocol::decode_feedback(&bytes, now_ms as i64 * 1000) {
                    Ok(relayed) => items.extend(relayed),
                    Err(e) => tracing::warn!(object = %location, error = %e,
                        "feedback relay: not relayed feedback; skipped"),
                }
            }
            read.push((name, ms));
        }
        Ok((items, read))
    }

    fn mark_read(&self, model: &str, names: Vec<(String, u64)>) {
        self.read
            .lock()
            .entry(model.to_string())
            .or_default()
            .extend(names);
    }

    /// Deletes this replica's objects past the horizon and forgets the others' that are.
    async fn expire(&self, now_ms: u64) {
        let horizon_ms = now_ms.saturating_sub(HORIZON.as_millis() as u64);
        loop {
            let old = {
                let mut written = self.written.lock();
                match written.front() {
                    Some((ms, _)) if *ms < horizon_ms => written.pop_front(),
                    _ => None,
                }
            };
            let Some((_, path)) = old else { break };
            match timed(self.store.delete(&path)).await {
                Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
                Ok(Err(e)) => tracing::warn!(object = %path, error = %e,
                    "feedback relay: an expired object was not deleted"),
                Err(e) => tracing::warn!(object = %path, error = %e,
                    "feedback relay: an expired object was not deleted"),
            }
        }
        for seen in self.read.lock().values_mut() {
            seen.retain(|_, ms| *ms >= horizon_ms);
        }
    }
}

/// `<ms>-<replica>-<seq>.json` → (ms, replica).
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (ms, rest) = stem.split_once('-')?;
    let (replica, seq) = rest.rsplit_once('-')?;
    seq.parse::<u64>().ok()?;
    Some((ms.parse().ok()?, replica))
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    crate::store::within(STORE_CALL_TIMEOUT, f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn item(id: &str) -> FeedbackItem {
        FeedbackItem {
            id: id.into(),
            row: 0,
            label: Some("1".into()),
            target: None,
            time_us: Some(5),
        }
    }

    /// Reads what is new and marks it read, as a look that handed it to the monitor does.
    async fn take(relay: &Relay, model: &str, now_ms: u64) -> Vec<FeedbackItem> {
        let (items, read) = relay.read_new(model, now_ms).await.unwrap();
        relay.mark_read(model, read);
        items
    }

    /// What one replica relays, each other replica reads once; nobody reads its own; objects
    /// past the horizon are deleted by their writer and no longer read.
    #[tokio::test]
    async fn relayed_feedback_is_read_once_by_every_other_replica() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let open = |r: &str| {
            Relay::with_store(
                Arc::clone(&store),
                StorePath::from("state"),
                r,
                Metrics::new(),
            )
        };
        let (a, b, c) = (open("a"), open("b"), open("c"));
        let t0 = 1_796_000_000_000;
        assert_eq!(a.offer("m", vec![item("r1"), item("r2")]), 2);
        a.write_waiting(t0).await.unwrap();
        assert!(take(&a, "m", t0).await.is_empty(), "not its own");
        // Read but not taken (the monitor refused them): read again at the next look.
        assert_eq!(b.read_new("m", t0 + 1).await.unwrap().0.len(), 2);
        let got = take(&b, "m", t0 + 1).await;
        assert_eq!(got, vec![item("r1"), item("r2")]);
        assert!(take(&b, "m", t0 + 2).await.is_empty(), "read once");
        assert_eq!(take(&c, "m", t0 + 2).await.len(), 2);
        // Another model's feedback is not this one's.
        assert!(take(&b, "other", t0 + 2).await.is_empty());
        // A second batch, later: only it is new.
        a.offer("m", vec![item("r3")]);
        a.write_waiting(t0 + 1_000).await.unwrap();
        assert_eq!(take(&b, "m", t0 + 1_001).await, vec![item("r3")]);
        // An object named far in the future (a fast clock) is left for later and hides
        // nothing written meanwhile.
        let future = StorePath::from(format!(
            "state/feedback/m/{:013}-z-000000.json",
            t0 + 3_600_000
        ));
        store
            .put(&future, PutPayload::from(b"[]".to_vec()))
            .await
            .unwrap();
        a.offer("m", vec![item("r4")]);
        a.write_waiting(t0 + 2_000).await.unwrap();
        assert_eq!(take(&b, "m", t0 + 2_001).await, vec![item("r4")]);
        store.delete(&future).await.unwrap();
        // Past the horizon the writer deletes its objects.
        let later = t0 + 2_000 + HORIZON.as_millis() as u64 + 1;
        a.expire(later).await;
        let left: Vec<_> = store
            .list(Some(&StorePath::from("state/feedback")))
            .collect::<Vec<_>>()
            .await;
        assert!(left.is_empty(), "{left:?}");
        let d = open("d");
        assert!(take(&d, "m", later).await.is_empty());
    }

    /// What another writer put under the relay's prefix is read as a caller's feedback body
    /// would be: an object with an item past the API's limits (an id of 2 KiB) is skipped
    /// whole, one larger than the object limit is not read at all, and neither stops the
    /// objects beside it. A writer splits its queue into objects under that limit.
    #[tokio::test]
    async fn hostile_objects_are_refused_by_the_feedback_api_limits() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let open = |r: &str| {
            Relay::with_store(
                Arc::clone(&store),
                StorePath::from("state"),
                r,
                Metrics::new(),
            )
        };
        let (a, b) = (open("a"), open("b"));
        let t0 = 1_796_000_000_000u64;
        let at = |n: u64| StorePath::from(format!("state/feedback/m/{:013}-z-{n:06}.json", t0));
        let long_id = format!(r#"[{{"id":"{}","row":0,"label":"1"}}]"#, "x".repeat(2048));
        store
            .put(&at(0), PutPayload::from(long_id.into_bytes()))
            .await
            .unwrap();
        let huge = vec![b' '; MAX_OBJECT_BYTES as usize + 1];
        store.put(&at(1), PutPayload::from(huge)).await.unwrap();
        store
            .put(
                &at(2),
                PutPayload::from(br#"[{"id":"ok","label":"1"}]"#.to_vec()),
            )
            .await
            .unwrap();
        let got = take(&b, "m", t0 + 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "ok");

        let many: Vec<_> = (0..ITEMS_PER_OBJECT + 1)
            .map(|i| item(&i.to_string()))
            .collect();
        a.offer("m", many);
        a.write_waiting(t0 + 1_000).await.unwrap();
        assert_eq!(a.written.lock().len(), 2, "split into objects of the limit");
        assert_eq!(take(&b, "m", t0 + 1_001).await.len(), ITEMS_PER_OBJECT + 1);
    }

    /// Past its queue, the relay takes what fits and counts the rest.
    #[test]
    fn the_queue_is_bounded() {
        let relay = Relay::with_store(
            Arc::new(InMemory::new()),
            StorePath::from("s"),
            "a",
            Metrics::new(),
        );
        let many: Vec<_> = (0..MAX_WAITING + 5).map(|i| item(&i.to_string())).collect();
        assert_eq!(relay.offer("m", many), MAX_WAITING);
        assert_eq!(relay.offer("m", vec![item("x")]), 0);
    }

    #[test]
    fn names_carry_the_time_and_the_replica() {
        assert_eq!(
            parse_name("0001796647502672-cairn-7d9f-0-000003.json"),
            Some((1_796_647_502_672, "cairn-7d9f-0"))
        );
        assert_eq!(parse_name("x-a-1.json"), None);
        assert_eq!(parse_name("1-a-b.json"), None);
        assert_eq!(parse_name("1-a-1.txt"), None);
    }
}
