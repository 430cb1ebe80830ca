//! The uploader: one background task per server that moves every sealed segment of every
//! model's prediction and feedback logs into the log store, then deletes it locally.
//!
//! Each pass lists `<prediction_log_dir>/<model>/{predictions,feedback}/` (about once a second),
//! counts what waits there (sealed and open segments: the backlog), and uploads the sealed
//! `.parquet` segments oldest first, each with a conditional create. An object that already
//! exists with the same size was uploaded by an earlier process that died before deleting its
//! copy: that counts as confirmed. A local file is deleted only after its upload is confirmed,
//! so what a previous process sealed (or sealed at this start) is uploaded by this one.
//!
//! It never runs on the request path: the request path reads one flag per model, set here when
//! the model's backlog exceeds `log_store_backlog_max_bytes` (what it does then is the log's
//! `prediction_log_when_full` policy, in `monitoring`). A store that fails pauses every upload
//! for a backoff that doubles up to [`BACKOFF_MAX`]; every store call runs under
//! [`CALL_TIMEOUT`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::{object_path, Segment, KINDS};
use crate::config::MonitorSettings;
use crate::metrics::Metrics;

/// How often the log directories are looked at.
pub const SCAN_PERIOD: Duration = Duration::from_secs(1);

/// A pass catching up on a long backlog stops uploading after this long and starts the next at
/// once, so that the backlog (what the request path is held to) is measured again meanwhile.
const PASS_MAX: Duration = Duration::from_secs(10);

/// The longest one store call (an upload of one segment, a look at an object) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// After a failed upload, the first wait; it doubles with each failure in a row, up to
/// [`BACKOFF_MAX`], and starts again after a success.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Uploads the log of every model of this server.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
    replica: String,
    /// `prediction_log_dir`: `<dir>/<model>/<kind>/`.
    dir: PathBuf,
    backlog: Arc<Backlog>,
    metrics: Metrics,
    nudge: Notify,
    retry: Mutex<Retry>,
}

/// Each model's backlog against its limit, as the request path reads it: one flag per model.
pub struct Backlog {
    max_bytes: u64,
    full: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// The failures in a row and when the store is tried again.
#[derive(Default)]
struct Retry {
    failures: u32,
    paused_until: Option<Instant>,
    /// The segment the store refused last, and how many times in a row: one it keeps refusing
    /// (while it takes others, or whatever the reason) is set aside on its own backoff, so it
    /// never holds up the segments behind it.
    refused: Option<(PathBuf, u32)>,
    /// Files that failed on this side (unreadable), tried again after their own backoff.
    files: HashMap<PathBuf, (u32, Instant)>,
}

/// A segment file waiting on disk.
#[derive(Clone, Debug)]
struct Waiting {
    model: String,
    kind: &'static str,
    path: PathBuf,
    bytes: u64,
    /// `None`: open, or not a sealed segment's name (counted in the backlog, not uploaded).
    sealed: Option<Segment>,
    modified: SystemTime,
}

/// Why one upload failed: on the store's side (pause everything), or this file's alone (on
/// our side, or another object under its name): pause it only, so that one segment never
/// holds up the others.
enum Failure {
    Store(String),
    File(String),
}

impl Backlog {
    pub fn new(max_bytes: u64) -> Backlog {
        Backlog {
            max_bytes,
            full: Mutex::new(HashMap::new()),
        }
    }

    /// The flag of `model`, true while its backlog is over the limit. The request path holds
    /// it and reads it without a lock.
    pub fn flag(&self, model: &str) -> Arc<AtomicBool> {
        Arc::clone(self.full.lock().entry(model.to_string()).or_default())
    }

    fn set(&self, model: &str, bytes: u64) {
        self.flag(model)
            .store(bytes > self.max_bytes, Ordering::Release);
    }
}

impl Uploader {
    /// An uploader into `url` (a prefix) as `replica`, of the logs under `settings.dir`.
    /// Nothing is contacted yet.
    pub fn open(
        url: &str,
        replica: &str,
        settings: &MonitorSettings,
        metrics: Metrics,
    ) -> Result<Uploader, String> {
        let timeout = format!("{}s", CALL_TIMEOUT.as_secs());
        let (store, prefix) =
            crate::store::open(url, &timeout).map_err(|e| format!("log_store '{url}': {e}"))?;
        Ok(Self::with_store(
            store, prefix, url, replica, settings, metrics,
        ))
    }

    /// Over a given store (tests).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: StorePath,
        url: &str,
        replica: &str,
        settings: &MonitorSettings,
        metrics: Metrics,
    ) -> Uploader {
        Uploader {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            replica: replica.to_string(),
            dir: settings.dir.clone(),
            backlog: Arc::new(Backlog::new(settings.log_store_backlog_max_bytes)),
            metrics,
            nudge: Notify::new(),
            retry: Mutex::new(Retry::default()),
        }
    }

    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// Asks for a pass now rather than at the next period.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Passes every [`SCAN_PERIOD`] (or when nudged) until `stop`; a pass in flight when the
    /// stop comes is abandoned (a segment is deleted only once its upload is confirmed, so
    /// nothing is lost: the next process uploads it).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(url = %self.url, replica = %self.replica, "prediction log: segments are uploaded to the log store");
        loop {
            tokio::select! {
                () = self.pass(false) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(SCAN_PERIOD) => {}
                () = self.nudge.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The last pass, after the writers sealed everything at shutdown: every segment tried
    /// once, whatever the backoff, within `within`. What is left stays on disk for the next
    /// start.
    pub async fn finish(&self, within: Duration) {
        if tokio::time::timeout(within, self.pass(true)).await.is_err() {
            tracing::warn!(url = %self.url, "prediction log: uploads unfinished at shutdown; the next start uploads the rest");
        }
    }

    /// One pass: the backlog measured and published, then the sealed segments uploaded oldest
    /// first (unless the store is in its backoff; `last` ignores it).
    async fn pass(&self, last: bool) {
        let dir = self.dir.clone();
        let waiting = match tokio::task::spawn_blocking(move || scan(&dir)).await {
            Ok(Ok(waiting)) => waiting,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "prediction log: cannot list the log for upload");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "prediction log: the upload scan failed");
                return;
            }
        };
        let mut tally = Tally::of(&waiting);
        self.publish(&tally);
        let now = Instant::now();
        if !last && self.retry.lock().paused_until.is_some_and(|t| now < t) {
            return;
        }
        let mut sealed: Vec<&Waiting> = waiting.iter().filter(|w| w.sealed.is_some()).collect();
        sealed.sort_by_key(|w| (w.sealed, w.model.clone(), w.kind));
        for w in sealed {
            if !last && now.elapsed() > PASS_MAX {
                self.nudge();
                return;
            }
            if !last && self.file_paused(&w.path, now) {
                continue;
            }
            match self.upload(w).await {
                Ok(false) => tally.remove(w),
                Ok(true) => {
                    let mut retry = self.retry.lock();
                    retry.failures = 0;
                    retry.refused = None;
                    drop(retry);
                    self.metrics.record_log_uploaded(&w.model, w.kind, w.bytes);
                    tally.remove(w);
                    self.publish(&tally);
                }
                Err(Failure::Store(reason)) => {
                    self.metrics.record_log_upload_failure(&w.model, w.kind);
                    if self.refused_again(&w.path) >= SAME_SEGMENT_REFUSALS {
                        let wait = self.pause_file(&w.path);
                        tracing::warn!(url = %self.url, segment = %w.path.display(), error = %reason,
                            retry_in_s = wait.as_secs_f64(),
                            "prediction log: the store refused this segment {SAME_SEGMENT_REFUSALS} times in a row; set aside, the others go on");
                        continue;
                    }
                    let wait = self.pause_store();
                    tracing::warn!(url = %self.url, segment = %w.path.display(), error = %reason,
                        retry_in_s = wait.as_secs_f64(), "prediction log: upload failed; the segment stays on disk");
                    return;
                }
                Err(Failure::File(reason)) => {
                    self.metrics.record_log_upload_failure(&w.model, w.kind);
                    let wait = self.pause_file(&w.path);
                    tracing::warn!(segment = %w.path.display(), error = %reason,
                        retry_in_s = wait.as_secs_f64(), "prediction log: segment not uploaded");
                }
            }
        }
    }

    /// Uploads one sealed segment and deletes it once the store holds it; `false` when it was
    /// gone already.
    async fn upload(&self, w: &Waiting) -> Result<bool, Failure> {
        let segment = w.sealed.expect("only sealed segments are uploaded");
        let body = match tokio::fs::read(&w.path).await {
            Ok(body) => body,
            // Gone since the scan (another pass of ours: nothing to do).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Failure::File(format!("cannot read: {e}"))),
        };
        let size = body.len() as u64;
        let path = object_path(&self.prefix, &w.model, w.kind, &segment, &self.replica);
        // A conditional create: never over an object already there.
        let put = crate::store::write_if(self.store.as_ref(), &path, body, None);
        match tokio::time::timeout(CALL_TIMEOUT, put).await {
            Ok(Ok(Some(_))) => {}
            // An earlier process uploaded it and died before deleting its copy, or this one
            // could not delete it: the same object if it is the same size.
            Ok(Ok(None)) => self.same(&path, size).await?,
            Ok(Err(e)) => return Err(Failure::Store(crate::store::one_line(&e))),
            Err(_) => return Err(Failure::Store(timed_out("an upload"))),
        }
        match tokio::fs::remove_file(&w.path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Failure::File(format!(
                "uploaded to {path} but cannot be deleted: {e}"
            ))),
        }
    }

    /// Whether the object at `path` is the segment of `size` bytes being uploaded. Another size
    /// means two replicas share a `replica_id`: nothing is deleted, and the failure says so.
    async fn same(&self, path: &StorePath, size: u64) -> Result<(), Failure> {
        match tokio::time::timeout(CALL_TIMEOUT, self.store.head(path)).await {
            Ok(Ok(meta)) if meta.size == size => Ok(()),
            Ok(Ok(meta)) => Err(Failure::File(format!(
                "{path} already holds another object ({} bytes, this segment {size}): is \
                 replica_id '{}' used by two replicas?",
                meta.size, self.replica
            ))),
            Ok(Err(e)) => Err(Failure::Store(crate::store::one_line(&e.to_string()))),
            Err(_) => Err(Failure::Store(timed_out("a look at an object"))),
        }
    }

    /// Publishes each model's backlog (gauges, and the request path's flags).
    fn publish(&self, tally: &Tally) {
        let now = SystemTime::now();
        for ((model, kind), t) in &tally.kinds {
            let oldest = t
                .oldest_sealed
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            self.metrics.set_log_backlog(model, kind, t.bytes, oldest);
        }
        for (model, bytes) in tally.models() {
            self.backlog.set(&model, bytes);
        }
    }

    /// Counts a refusal of `path` by the store: how many in a row, this one included.
    fn refused_again(&self, path: &Path) -> u32 {
        let mut retry = self.retry.lock();
        let n = match &retry.refused {
            Some((p, n)) if p == path => n + 1,
            _ => 1,
        };
        retry.refused = Some((path.to_path_buf(), n));
        n
    }

    fn pause_store(&self) -> Duration {
        let mut retry = self.retry.lock();
        retry.failures = retry.failures.saturating_add(1);
        let wait = backoff(retry.failures);
        retry.paused_until = Some(Instant::now() + wait);
        wait
    }

    fn pause_file(&self, path: &Path) -> Duration {
        let mut retry = self.retry.lock();
        let entry = retry
            .files
            .entry(path.to_path_buf())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let wait = backoff(entry.0);
        entry.1 = Instant::now() + wait;
        // Forget files that are gone, so the map never grows beyond what is on disk.
        retry.files.retain(|p, _| p.exists());
        wait
    }

    fn file_paused(&self, path: &Path, now: Instant) -> bool {
        self.retry
            .lock()
            .files
            .get(path)
            .is_some_and(|(_, until)| now < *until)
    }
}

/// Refusals in a row of one segment after which it is set aside (the store's own backoff
/// applies before: a store that is down refuses every segment, and is waited for).
const SAME_SEGMENT_REFUSALS: u32 = 3;

/// The wait after `failures` in a row: 1 s, 2 s, 4 s, ... up to [`BACKOFF_MAX`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

fn timed_out(what: &str) -> String {
    format!("{what} took more than {} s", CALL_TIMEOUT.as_secs())
}

/// What waits, per model and kind.
#[derive(Default)]
struct Tally {
    kinds: HashMap<(String, &'static str), KindTally>,
}

#[derive(Default)]
struct KindTally {
    bytes: u64,
    /// When the oldest sealed segment was sealed (its file's time).
    oldest_sealed: Option<SystemTime>,
    sealed: usize,
}

impl Tally {
    fn of(waiting: &[Waiting]) -> Tally {
        let mut tally = Tally::default();
        for w in waiting {
            let t = tally.kinds.entry((w.model.clone(), w.kind)).or_default();
            t.bytes += w.bytes;
            if w.sealed.is_some() {
                t.sealed += 1;
                t.oldest_sealed = Some(t.oldest_sealed.map_or(w.modified, |o| o.min(w.modified)));
            }
        }
        tally
    }

    /// One uploaded segment less; the oldest time is kept until the next scan unless none is
    /// left (close enough for a gauge read every few seconds).
    fn remove(&mut self, w: &Waiting) {
        if let Some(t) = self.kinds.get_mut(&(w.model.clone(), w.kind)) {
            t.bytes = t.bytes.saturating_sub(w.bytes);
            t.sealed = t.sealed.saturating_sub(1);
            if t.sealed == 0 {
                t.oldest_sealed = None;
            }
        }
    }

    fn models(&self) -> HashMap<String, u64> {
        let mut models: HashMap<String, u64> = HashMap::new();
        for ((model, _), t) in &self.kinds {
            *models.entry(model.clone()).or_default() += t.bytes;
        }
        models
    }
}

/// Every segment file under `<dir>/<model>/<kind>/`. Directories that are not models (hidden
/// ones) are left alone; a model directory without logs has none. Blocking.
fn scan(dir: &Path) -> std::io::Result<Vec<Waiting>> {
    let mut out = Vec::new();
    let models = match std::fs::read_dir(dir) {
        Ok(models) => models,
        // Nothing logged yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for model in models {
        let model = model?;
        let Some(name) = model.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if crate::repository::scan::check_name(&name).is_err() || !model.path().is_dir() {
            continue;
        }
        for kind in KINDS {
            let entries = match std::fs::read_dir(model.path().join(kind)) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let Some(file) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(meta) if meta.is_file() => meta,
                    // Sealed, uploaded or deleted since the listing; or not a file.
                    _ => continue,
                };
                out.push(Waiting {
                    model: name.clone(),
                    kind,
                    path: entry.path(),
                    bytes: meta.len(),
                    sealed: Segment::parse_local(&file),
                    modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn settings(dir: &Path, max: u64) -> MonitorSettings {
        let mut s = MonitorSettings::defaults(dir);
        s.dir = dir.to_path_buf();
        s.log_store_backlog_max_bytes = max;
        s
    }

    fn put(dir: &Path, rel: &str, bytes: usize) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; bytes]).unwrap();
        path
    }

    async fn listed(store: &InMemory) -> Vec<String> {
        use futures_util::StreamExt;
        let mut names: Vec<String> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        names.sort();
        names
    }

    /// A segment the store keeps refusing (here a directory stands where its object goes) is
    /// set aside after a few tries in a row; the segments behind it go up.
    #[tokio::test]
    async fn a_segment_the_store_keeps_refusing_holds_up_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let store =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root.path()).unwrap());
        let up = Uploader::with_store(
            store,
            StorePath::from("logs"),
            "file:///logs",
            "pod-1",
            &settings(dir.path(), 1 << 20),
            Metrics::new(),
        );
        let stuck = put(dir.path(), "m/predictions/1796166458013-000000.parquet", 10);
        let next = put(dir.path(), "m/predictions/1796166459013-000001.parquet", 10);
        let blocker = root
            .path()
            .join("logs/m/predictions/date=2026-12-01/pod-1-1796166458013-000000.parquet");
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        for _ in 1..SAME_SEGMENT_REFUSALS {
            up.pass(true).await;
            assert!(
                stuck.exists() && next.exists(),
                "held up while it may be the store"
            );
        }
        up.pass(true).await;
        assert!(stuck.exists(), "the refused segment stays on disk");
        assert!(!next.exists(), "the one behind it went up");
    }

    #[tokio::test]
    async fn sealed_segments_are_uploaded_under_their_day_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let metrics = Metrics::new();
        let up = Uploader::with_store(
            store.clone(),
            StorePath::from("logs"),
            "memory:///logs",
            "pod-1",
            &settings(dir.path(), 1 << 20),
            metrics.clone(),
        );
        // 2026-12-01T23:07:38.013Z and a minute past midnight.
        let a = put(
            dir.path(),
            "iris/predictions/1796166458013-000000.parquet",
            100,
        );
        let b = put(
            dir.path(),
            "iris/predictions/1796169660000-000001.parquet",
            50,
        );
        let open = put(
            dir.path(),
            "iris/predictions/1796169700000-000002.arrows",
            30,
        );
        let f = put(dir.path(), "iris/feedback/1796166458013-000000.parquet", 10);
        let other = put(dir.path(), "iris/reports/1796166458013-000000.parquet", 10);
        let hidden = put(
            dir.path(),
            ".staging/predictions/1796166458013-000000.parquet",
            10,
        );
        up.pass(false).await;
        assert_eq!(
            listed(&store).await,
            [
                "logs/iris/feedback/date=2026-12-01/pod-1-1796166458013-000000.parquet",
                "logs/iris/predictions/date=2026-12-01/pod-1-1796166458013-000000.parquet",
                "logs/iris/predictions/date=2026-12-02/pod-1-1796169660000-000001.parquet",
            ]
        );
        assert!(
            !a.exists() && !b.exists() && !f.exists(),
            "deleted once uploaded"
        );
        assert!(open.exists() && other.exists() && hidden.exists());
        let text = String::from_utf8(metrics.render()).unwrap();
        for line in [
            r#"cairn_log_store_uploaded_segments_total{kind="predictions",model="iris"} 2"#,
            r#"cairn_log_store_uploaded_bytes_total{kind="predictions",model="iris"} 150"#,
            r#"cairn_log_store_backlog_bytes{kind="predictions",model="iris"} 30"#,
            r#"cairn_log_store_oldest_pending_age_seconds{kind="predictions",model="iris"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    /// A restarted replica finds a segment the previous process uploaded but did not delete:
    /// the same object, so it counts as confirmed and the copy goes. Another object under the
    /// name (two replicas with one id) is never overwritten, and the copy stays.
    #[tokio::test]
    async fn an_object_already_there_is_confirmed_only_if_it_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let metrics = Metrics::new();
        let up = Uploader::with_store(
            store.clone(),
            StorePath::from("logs"),
            "memory:///logs",
            "pod-1",
            &settings(dir.path(), 1 << 20),
            metrics.clone(),
        );
        let same = put(
            dir.path(),
            "m/predictions/1796166458013-000000.parquet",
            100,
        );
        let clash = put(
            dir.path(),
            "m/predictions/1796166458014-000001.parquet",
            100,
        );
        store
            .put(
                &StorePath::from(
                    "logs/m/predictions/date=2026-12-01/pod-1-1796166458013-000000.parquet",
                ),
                PutPayload::from(vec![7u8; 100]),
            )
            .await
            .unwrap();
        store
            .put(
                &StorePath::from(
                    "logs/m/predictions/date=2026-12-01/pod-1-1796166458014-000001.parquet",
                ),
                PutPayload::from(vec![1u8; 3]),
            )
            .await
            .unwrap();
        up.pass(false).await;
        assert!(!same.exists(), "confirmed by the object already there");
        assert!(clash.exists(), "another object under its name: kept");
        let got = store
            .get(&StorePath::from(
                "logs/m/predictions/date=2026-12-01/pod-1-1796166458014-000001.parquet",
            ))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.len(), 3, "never overwritten");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text
            .contains(r#"cairn_log_store_upload_failures_total{kind="predictions",model="m"} 1"#));
        let retry = up.retry.lock();
        assert!(
            retry.paused_until.is_none(),
            "one clash holds up no other segment"
        );
        assert!(
            retry.files.contains_key(&clash),
            "the clashing segment backs off alone"
        );
    }

    #[tokio::test]
    async fn the_backlog_flag_follows_the_bytes_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // A store that cannot be written: a file where its directory should be.
        let blocked = dir.path().join("store");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let store = Arc::new(object_store::local::LocalFileSystem::new());
        let prefix = StorePath::from_filesystem_path(&blocked).unwrap();
        let logs = dir.path().join("logs");
        let metrics = Metrics::new();
        let up = Uploader::with_store(
            store,
            prefix,
            "file:///store",
            "pod-1",
            &settings(&logs, 120),
            metrics.clone(),
        );
        let flag = up.backlog().flag("m");
        let first = put(&logs, "m/predictions/1796166458013-000000.parquet", 100);
        up.pass(false).await;
        assert!(!flag.load(Ordering::Acquire), "100 of 120 bytes");
        assert!(first.exists(), "a failed upload deletes nothing");
        put(&logs, "m/feedback/1796166458013-000000.parquet", 30);
        up.pass(false).await;
        assert!(
            flag.load(Ordering::Acquire),
            "130 of 120 bytes, over both kinds"
        );
        assert_eq!(
            up.retry.lock().failures,
            1,
            "the second pass waited out the backoff"
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(
                r#"cairn_log_store_upload_failures_total{kind="predictions",model="m"} 1"#
            ),
            "{text}"
        );
        // The store comes back: everything goes up and the flag clears.
        std::fs::remove_file(&blocked).unwrap();
        up.pass(true).await;
        assert!(!flag.load(Ordering::Acquire));
        assert!(!first.exists());
        assert_eq!(up.retry.lock().failures, 0);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
