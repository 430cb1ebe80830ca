//! Reading the log store back: the partitions a reader needs, downloaded into a directory laid
//! out as the local log (`<dir>/predictions/*.parquet`, `<dir>/feedback/*.parquet`), so that the
//! existing readers (`cairn_monitor::dataset`, `cairn_train::data`) read every replica's
//! segments unchanged and nothing but this module talks to the store.
//!
//! Partitions are pruned by the rule in the module above ([`Days`]); the rows themselves are
//! still filtered by time by the readers. What is downloaded is bounded: a selection whose
//! listed objects add up to more than the limit is refused before anything is downloaded,
//! naming the size and the way to narrow it. Every store call runs under [`CALL_TIMEOUT`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore};
use tokio::io::AsyncWriteExt;

use super::upload::CALL_TIMEOUT;
use super::{parse_partition, partition, Days, Segment};

/// Default of the most a reader downloads (`CAIRN_LOG_STORE_READ_MAX_BYTES`).
pub const DEFAULT_READ_MAX_BYTES: u64 = 4 << 30;

/// The environment variable that changes [`DEFAULT_READ_MAX_BYTES`].
pub const READ_MAX_BYTES_ENV: &str = "CAIRN_LOG_STORE_READ_MAX_BYTES";

/// The most a reader downloads: `CAIRN_LOG_STORE_READ_MAX_BYTES`, else 4 GiB.
pub fn read_max_bytes() -> Result<u64, String> {
    match std::env::var(READ_MAX_BYTES_ENV) {
        Err(_) => Ok(DEFAULT_READ_MAX_BYTES),
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{READ_MAX_BYTES_ENV}: '{v}' is not a number of bytes")),
    }
}

/// One model's log in a store: `<prefix>/<model>/{predictions,feedback}/date=.../`.
pub struct StoreLog {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/<model>`.
    path: StorePath,
    /// The same, as a URL, for messages.
    url: String,
}

/// What to bring back.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Predictions logged in `[from_us, to_us)` (microseconds since the epoch; `None` open).
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// The feedback too (for a join with the predictions).
    pub feedback: bool,
    /// This replica's segments still on local disk (`<log>/<model>`), and its id: staged too,
    /// so that a reader on the server sees what is not uploaded yet, and not twice what is.
    pub local: Option<(PathBuf, String)>,
}

/// What was brought back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staged {
    pub partitions: usize,
    pub segments: usize,
    pub bytes: u64,
    /// Segments taken from local disk rather than the store.
    pub local_segments: usize,
    /// Prediction partitions left out because the newest ones were enough.
    pub skipped_partitions: usize,
}

/// A partition and its objects, as listed.
struct Listed {
    kind: &'static str,
    day: i64,
    objects: Vec<(ObjectMeta, String, Segment)>,
    bytes: u64,
}

impl StoreLog {
    /// The log of `model` under the store prefix `url` (`data.log.dir`), or, without a model,
    /// the model's own prefix (`--window s3://bucket/logs/iris`, or its `predictions`).
    pub fn open(url: &str, model: Option<&str>) -> Result<StoreLog, String> {
        let timeout = format!("{}s", CALL_TIMEOUT.as_secs());
        let (store, mut path) =
            crate::store::open(url, &timeout).map_err(|e| format!("'{url}': {e}"))?;
        let mut shown = url.trim_end_matches('/').to_string();
        match model {
            Some(model) => {
                path = path.child(model);
                shown = format!("{shown}/{model}");
            }
            None => {
                let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
                if parts
                    .last()
                    .is_some_and(|p| p == "predictions" || p == "feedback")
                {
                    path =
                        StorePath::from_iter(parts[..parts.len() - 1].iter().map(String::as_str));
                    shown = shown
                        .rsplit_once('/')
                        .map_or(shown.clone(), |(p, _)| p.to_string());
                }
            }
        }
        Ok(StoreLog {
            store,
            path,
            url: shown,
        })
    }

    /// Over a given store (tests).
    pub fn with_store(store: Arc<dyn ObjectStore>, path: StorePath, url: &str) -> StoreLog {
        StoreLog {
            store,
            path,
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Downloads the selection into `dest` (`dest/predictions`, `dest/feedback`), at most
    /// `max_bytes` of it: more is refused before anything is downloaded.
    pub async fn stage(
        &self,
        selection: &Selection,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<Staged, String> {
        let mut staged = Staged::default();
        let local = self.stage_local(selection, dest, &mut staged).await?;
        let listed = self
            .select(selection, max_bytes, &local, staged.bytes)
            .await?;
        for partition in &listed {
            self.download_partition(partition, dest, &mut staged)
                .await?;
        }
        Ok(staged)
    }

    /// As [`stage`](Self::stage), for a reader that wants the newest rows only: the feedback in
    /// range, then prediction partitions newest first, asking `enough(dest)` after 1, 2, 4, ...
    /// of them; the older ones are never downloaded. The byte limit counts what is downloaded.
    pub async fn stage_newest(
        &self,
        selection: &Selection,
        dest: &Path,
        max_bytes: u64,
        mut enough: impl FnMut(&Path) -> bool,
    ) -> Result<Staged, String> {
        let mut staged = Staged::default();
        let local = self.stage_local(selection, dest, &mut staged).await?;
        let feedback = match selection.feedback {
            true => {
                self.list_kind("feedback", Days::feedback(selection.from_us), &local)
                    .await?
            }
            false => Vec::new(),
        };
        let mut predictions = self
            .list_kind(
                "predictions",
                Days::predictions(selection.from_us, selection.to_us),
                &local,
            )
            .await?;
        predictions.sort_by_key(|p| std::cmp::Reverse(p.day));
        let mut taken = staged.bytes;
        for partition in &feedback {
            taken += partition.bytes;
            self.check_limit(taken, max_bytes, selection)?;
            self.download_partition(partition, dest, &mut staged)
                .await?;
        }
        let total = predictions.len();
        for (i, partition) in predictions.iter().enumerate() {
            taken += partition.bytes;
            self.check_limit(taken, max_bytes, selection)?;
            self.download_partition(partition, dest, &mut staged)
                .await?;
            // Asked after 1, 2, 4, 8, ... partitions: the reads it costs stay within twice
            // the one read a reader does anyway.
            let done = i + 1;
            if done.is_power_of_two() && done < total && enough(dest) {
                staged.skipped_partitions = total - done;
                break;
            }
        }
        Ok(staged)
    }

    /// This replica's segments still on disk, linked (or copied) into `dest` under their local
    /// names; the segments they are, so that their uploaded copies are not staged again.
    async fn stage_local(
        &self,
        selection: &Selection,
        dest: &Path,
        staged: &mut Staged,
    ) -> Result<HashSet<(String, Segment)>, String> {
        let Some((dir, replica)) = selection.local.clone() else {
            return Ok(HashSet::new());
        };
        let dest = dest.to_path_buf();
        let feedback = selection.feedback;
        let (found, count, bytes) =
            tokio::task::spawn_blocking(move || link_local(&dir, &dest, feedback))
                .await
                .map_err(|e| format!("staging the local log: {e}"))??;
        staged.local_segments += count;
        staged.segments += count;
        staged.bytes += bytes;
        Ok(found
            .into_iter()
            .map(|segment| (replica.clone(), segment))
            .collect())
    }

    /// Every partition of the selection, listed, within the limit.
    async fn select(
        &self,
        selection: &Selection,
        max_bytes: u64,
        local: &HashSet<(String, Segment)>,
        already: u64,
    ) -> Result<Vec<Listed>, String> {
        let mut listed = self
            .list_kind(
                "predictions",
                Days::predictions(selection.from_us, selection.to_us),
                local,
            )
            .await?;
        if selection.feedback {
            listed.extend(
                self.list_kind("feedback", Days::feedback(selection.from_us), local)
                    .await?,
            );
        }
        let total = already + listed.iter().map(|p| p.bytes).sum::<u64>();
        self.check_limit(total, max_bytes, selection)?;
        Ok(listed)
    }

    fn check_limit(&self, bytes: u64, max_bytes: u64, selection: &Selection) -> Result<(), String> {
        if bytes <= max_bytes {
            return Ok(());
        }
        let days = Days::predictions(selection.from_us, selection.to_us);
        let range = match (days.first, days.last) {
            (None, None) => "every partition".to_string(),
            (first, last) => format!(
                "the partitions from {} to {}",
                first.map_or("the first".into(), partition),
                last.map_or("the last".into(), partition)
            ),
        };
        Err(format!(
            "{}: {range} hold more than {max_bytes} bytes, the most a reader downloads \
             ({READ_MAX_BYTES_ENV}); narrow the range (--from/--to, data.log.from/to, \
             data.log.last_rows) or raise it",
            self.url
        ))
    }

    /// The partitions of one kind within `days`, each with its segments (those staged from
    /// local disk left out).
    async fn list_kind(
        &self,
        kind: &'static str,
        days: Days,
        local: &HashSet<(String, Segment)>,
    ) -> Result<Vec<Listed>, String> {
        let root = self.path.child(kind);
        let listing =
            tokio::time::timeout(CALL_TIMEOUT, self.store.list_with_delimiter(Some(&root)))
                .await
                .map_err(|_| {
                    format!(
                        "{}/{kind}: no listing within {} s",
                        self.url,
                        CALL_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| {
                    format!(
                        "{}/{kind}: cannot list: {}",
                        self.url,
                        crate::store::one_line(&e.to_string())
                    )
                })?;
        let mut out = Vec::new();
        for dir in listing.common_prefixes {
            let Some(day) = dir.filename().and_then(parse_partition) else {
                continue;
            };
            if !days.contains(day) {
                continue;
            }
            let mut partition = Listed {
                kind,
                day,
                objects: Vec::new(),
                bytes: 0,
            };
            let mut objects = self.store.list(Some(&dir));
            loop {
                let next = tokio::time::timeout(CALL_TIMEOUT, objects.next())
                    .await
                    .map_err(|_| {
                        format!(
                            "{}/{kind}: no listing within {} s",
                            self.url,
                            CALL_TIMEOUT.as_secs()
                        )
                    })?;
                let Some(meta) = next else { break };
                let meta = meta.map_err(|e| {
                    format!(
                        "{}/{kind}: cannot list: {}",
                        self.url,
                        crate::store::one_line(&e.to_string())
                    )
                })?;
                let Some(name) = meta.location.filename().map(str::to_string) else {
                    continue;
                };
                let Some((replica, segment)) = Segment::parse_store(&name) else {
                    continue;
                };
                if local.contains(&(replica.to_string(), segment)) {
                    continue;
                }
                partition.bytes += meta.size;
                let staged = segment.staged_name(replica);
                partition.objects.push((meta, staged, segment));
            }
            out.push(partition);
        }
        out.sort_by_key(|p| p.day);
        Ok(out)
    }

    async fn download_partition(
        &self,
        partition: &Listed,
        dest: &Path,
        staged: &mut Staged,
    ) -> Result<(), String> {
        let dir = dest.join(partition.kind);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        for (meta, name, _) in &partition.objects {
            let to = dir.join(name);
            let download = self.download(meta, &to);
            staged.bytes += tokio::time::timeout(CALL_TIMEOUT, download)
                .await
                .map_err(|_| {
                    format!(
                        "{}: a download took more than {} s",
                        meta.location,
                        CALL_TIMEOUT.as_secs()
                    )
                })??;
            staged.segments += 1;
        }
        staged.partitions += 1;
        Ok(())
    }

    /// Streams one object to `to`, no more than it was listed at.
    async fn download(&self, meta: &ObjectMeta, to: &Path) -> Result<u64, String> {
        let failed = |e: object_store::Error| {
            format!(
                "cannot read {}: {}",
                meta.location,
                crate::store::one_line(&e.to_string())
            )
        };
        let local = |e: std::io::Error| format!("{}: {e}", to.display());
        let got = self.store.get(&meta.location).await.map_err(failed)?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(to).await.map_err(local)?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(failed)?;
            written += chunk.len() as u64;
            if written > meta.size {
                return Err(format!("{} grew while it was read", meta.location));
            }
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        Ok(written)
    }
}

/// Links (or copies) the segment files of `<dir>/predictions` (and `feedback`) into `dest`,
/// sealed and open alike, under their own names. Blocking.
fn link_local(
    dir: &Path,
    dest: &Path,
    feedback: bool,
) -> Result<(Vec<Segment>, usize, u64), String> {
    let mut found = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    let kinds: &[&str] = if feedback {
        &["predictions", "feedback"]
    } else {
        &["predictions"]
    };
    for kind in kinds {
        let from = dir.join(kind);
        let entries = match std::fs::read_dir(&from) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", from.display())),
        };
        let to = dest.join(kind);
        std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(segment) = local_segment(name) else {
                continue;
            };
            let mut target = to.join(name);
            if target.exists() {
                // Linked already: its open copy was sealed while this listing ran (below).
                continue;
            }
            let link = |from: &Path, to: &Path| {
                std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
            };
            let mut linked = link(&path, &target);
            if matches!(&linked, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
                && name.ends_with(".arrows")
            {
                // Sealed since the listing: its Parquet copy may come later in this listing
                // or not at all (listings miss files renamed meanwhile), so take it now.
                let sealed = path.with_extension("parquet");
                target = to.join(sealed.file_name().unwrap_or_default());
                if target.exists() {
                    continue;
                }
                linked = link(&sealed, &target);
            }
            match linked {
                Ok(()) => {}
                // Uploaded and deleted since the listing: the store has it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            bytes += std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
            count += 1;
            found.push(segment);
        }
    }
    Ok((found, count, bytes))
}

/// A local segment's identity, sealed (`.parquet`) or open (`.arrows`).
fn local_segment(name: &str) -> Option<Segment> {
    let stem = name
        .strip_suffix(".arrows")
        .map(|s| format!("{s}.parquet"))
        .unwrap_or_else(|| name.to_string());
    Segment::parse_local(&stem)
}

/// For a training config whose `data.log.dir` is a log store's URL: the model's log (every
/// replica's segments in the partitions of `data.log.from`/`to`, and the feedback from then on)
/// downloaded into a temporary directory under `temp_in` (the system's when `None`), and
/// `data.log.staged` pointed at it; the directory lives as long as the returned handle. With
/// `data.log.last_rows`, prediction partitions are read newest first until they hold enough
/// labelled rows. `local`: this replica's `prediction_log_dir` and id, whose segments not yet
/// uploaded are read from disk. `None` when the config reads no store. Blocking inside (the
/// join that counts labelled rows): run it off the runtime's workers.
pub async fn stage_training_log(
    config: &mut cairn_train::TrainConfig,
    local: Option<(&Path, &str)>,
    temp_in: Option<&Path>,
) -> Result<Option<(tempfile::TempDir, Staged)>, String> {
    let Some(log) = &config.data.log else {
        return Ok(None);
    };
    let Some(url) = log
        .dir
        .as_deref()
        .and_then(Path::to_str)
        .filter(|d| crate::store::is_url(d))
    else {
        return Ok(None);
    };
    let model = log.model.clone().unwrap_or_else(|| config.model.clone());
    let store = StoreLog::open(url, Some(&model)).map_err(|e| format!("data.log.dir: {e}"))?;
    let time = |key: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| {
                cairn_train::data::parse_time(s)
                    .map(|secs| (secs * 1e6) as i64)
                    .ok_or_else(|| format!("data.log.{key}: '{s}' is not a time"))
            })
            .transpose()
    };
    let selection = Selection {
        from_us: time("from", &log.from)?,
        to_us: time("to", &log.to)?,
        feedback: true,
        local: local.map(|(dir, replica)| (dir.join(&model), replica.to_string())),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(STAGED_PREFIX);
    let root = match temp_in {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(|e| format!("cannot make a directory to read the log store into: {e}"))?;
    let dest = root.path().join(&model);
    let max = read_max_bytes()?;
    let staged = match log.last_rows {
        None => store.stage(&selection, &dest, max).await?,
        Some(wanted) => {
            let mut data = config.data.clone();
            if let Some(log) = &mut data.log {
                log.staged = Some(root.path().to_path_buf());
            }
            let classify = config.trainer.kind.is_classifier();
            let enough = |_: &Path| {
                cairn_train::data::load(&data, &config.model, classify, None)
                    .is_ok_and(|frame| frame.rows() >= wanted)
            };
            store.stage_newest(&selection, &dest, max, enough).await?
        }
    };
    if let Some(log) = &mut config.data.log {
        log.staged = Some(root.path().to_path_buf());
    }
    Ok(Some((root, staged)))
}

/// The name a training job's copy of the log starts with, in the local log's directory.
const STAGED_PREFIX: &str = ".cairn-log-";

/// Removes the copies that jobs of an earlier process left in `dir` (it stopped during a run).
/// Call it before any job starts. Blocking.
pub fn remove_staged(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGED_PREFIX)
        {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "a stale copy of the log store is left");
            }
        }
    }
}

/// [`stage_training_log`] for `cairn train`, on a runtime of its own, saying on standard error
/// what it read.
pub fn stage_training_log_blocking(
    config: &mut cairn_train::TrainConfig,
) -> Result<Option<tempfile::TempDir>, String> {
    let Some((dir, staged)) = blocking(stage_training_log(config, None, None))? else {
        return Ok(None);
    };
    eprintln!(
        "log store: {} segments ({} bytes) from {} date partitions{}",
        staged.segments,
        staged.bytes,
        staged.partitions,
        match staged.skipped_partitions {
            0 => String::new(),
            n => format!(", {n} older ones not needed"),
        }
    );
    Ok(Some(dir))
}

/// Runs a read on a runtime of its own, for the command line (which has none).
pub fn blocking<T>(
    read: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the log store: {e}"))?
        .block_on(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    async fn put(store: &InMemory, path: &str, bytes: usize) {
        store
            .put(&StorePath::from(path), PutPayload::from(vec![1u8; bytes]))
            .await
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// A store of two replicas over three days (2026-12-01 to 03), and a foreign object.
    async fn store() -> Arc<InMemory> {
        let store = Arc::new(InMemory::new());
        let p = "logs/iris/predictions";
        put(
            &store,
            &format!("{p}/date=2026-12-01/pod-a-1796166458013-000000.parquet"),
            10,
        )
        .await;
        put(
            &store,
            &format!("{p}/date=2026-12-02/pod-b-1796200000000-000003.parquet"),
            20,
        )
        .await;
        put(
            &store,
            &format!("{p}/date=2026-12-03/pod-a-1796300000000-000001.parquet"),
            30,
        )
        .await;
        put(&store, &format!("{p}/date=2026-12-03/notes.txt"), 1).await;
        put(
            &store,
            &format!("{p}/other/pod-a-1796300000000-000009.parquet"),
            1,
        )
        .await;
        let f = "logs/iris/feedback";
        put(
            &store,
            &format!("{f}/date=2026-12-03/pod-b-1796300000000-000000.parquet"),
            5,
        )
        .await;
        store
    }

    fn us(s: &str) -> Option<i64> {
        let t = humantime::parse_rfc3339(s).unwrap();
        Some(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64)
    }

    #[tokio::test]
    async fn a_range_downloads_only_its_partitions() {
        let log = StoreLog::with_store(
            store().await,
            StorePath::from("logs/iris"),
            "memory:///logs/iris",
        );
        let dest = tempfile::tempdir().unwrap();
        // Rows of 2026-12-03: that day's partition and the day before's.
        let selection = Selection {
            from_us: us("2026-12-03T00:00:00Z"),
            to_us: us("2026-12-03T12:00:00Z"),
            ..Selection::default()
        };
        let staged = log.stage(&selection, dest.path(), 1 << 20).await.unwrap();
        assert_eq!(
            names(&dest.path().join("predictions")),
            [
                "1796200000000-000003-pod-b.parquet",
                "1796300000000-000001-pod-a.parquet"
            ]
        );
        assert_eq!(
            (staged.partitions, staged.segments, staged.bytes),
            (2, 2, 50)
        );
        assert!(!dest.path().join("feedback").exists());
        // Everything, feedback included.
        let dest = tempfile::tempdir().unwrap();
        let all = Selection {
            feedback: true,
            ..Selection::default()
        };
        let staged = log.stage(&all, dest.path(), 1 << 20).await.unwrap();
        assert_eq!(
            (staged.partitions, staged.segments, staged.bytes),
            (4, 4, 65)
        );
        // Over the limit: refused before a byte is downloaded, saying how to narrow it.
        let dest = tempfile::tempdir().unwrap();
        let err = log.stage(&all, dest.path(), 64).await.unwrap_err();
        assert!(
            err.contains("more than 64 bytes") && err.contains("--from/--to"),
            "{err}"
        );
        assert!(names(dest.path()).is_empty());
    }

    #[tokio::test]
    async fn the_newest_partitions_come_first_until_enough() {
        let log = StoreLog::with_store(
            store().await,
            StorePath::from("logs/iris"),
            "memory:///logs/iris",
        );
        let dest = tempfile::tempdir().unwrap();
        let mut asked = 0;
        let selection = Selection {
            feedback: true,
            ..Selection::default()
        };
        let staged = log
            .stage_newest(&selection, dest.path(), 1 << 20, |dir| {
                asked += 1;
                names(&dir.join("predictions")).len() >= 2
            })
            .await
            .unwrap();
        assert_eq!(
            names(&dest.path().join("predictions")),
            [
                "1796200000000-000003-pod-b.parquet",
                "1796300000000-000001-pod-a.parquet"
            ]
        );
        assert_eq!(names(&dest.path().join("feedback")).len(), 1);
        assert_eq!(
            staged.skipped_partitions, 1,
            "the oldest day is never downloaded"
        );
        assert_eq!(asked, 2);
    }

    /// On the server, this replica's segments not yet uploaded are read from disk, and those
    /// uploaded meanwhile are not read twice.
    #[tokio::test]
    async fn local_segments_join_and_are_not_read_twice() {
        let log = StoreLog::with_store(
            store().await,
            StorePath::from("logs/iris"),
            "memory:///logs/iris",
        );
        let local = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(local.path().join("predictions")).unwrap();
        for name in [
            "1796300000000-000001.arrows",
            "1796400000000-000002.parquet",
            "x.tmp",
        ] {
            std::fs::write(local.path().join("predictions").join(name), b"abc").unwrap();
        }
        let dest = tempfile::tempdir().unwrap();
        let selection = Selection {
            local: Some((local.path().to_path_buf(), "pod-a".into())),
            ..Selection::default()
        };
        let staged = log.stage(&selection, dest.path(), 1 << 20).await.unwrap();
        assert_eq!(
            names(&dest.path().join("predictions")),
            [
                "1796166458013-000000-pod-a.parquet",
                "1796200000000-000003-pod-b.parquet",
                "1796300000000-000001.arrows",
                "1796400000000-000002.parquet",
            ]
        );
        assert_eq!(staged.local_segments, 2);
    }

    #[test]
    fn copies_left_by_an_earlier_process_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".cairn-log-x1/iris/predictions")).unwrap();
        std::fs::create_dir_all(dir.path().join("iris/predictions")).unwrap();
        std::fs::create_dir_all(dir.path().join(".other")).unwrap();
        remove_staged(dir.path());
        assert_eq!(names(dir.path()), [".other", "iris"]);
        remove_staged(&dir.path().join("missing"));
    }

    #[test]
    fn a_url_names_the_model_or_its_predictions() {
        let log = StoreLog::open("file:///tmp/logs/iris/predictions/", None).unwrap();
        assert_eq!(log.path.as_ref(), "tmp/logs/iris");
        assert_eq!(log.url(), "file:///tmp/logs/iris");
        let log = StoreLog::open("file:///tmp/logs", Some("iris")).unwrap();
        assert_eq!(log.path.as_ref(), "tmp/logs/iris");
        assert_eq!(log.url(), "file:///tmp/logs/iris");
        assert!(StoreLog::open("nope://x", None).is_err());
    }
}
