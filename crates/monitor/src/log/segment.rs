//! Appending record batches to a directory of segments: the open Arrow IPC stream, its rotation
//! and sealing to Parquet, syncing, recovery after a crash, and retention.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::read::read_stream;
use super::LogError;

/// When appended batches are synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// After every append: nothing acknowledged by `append` is lost to a crash.
    EveryAppend,
    /// At most this long after an append (on the next `tick` or `append`): a crash loses at most
    /// this much of the most recent records.
    Interval(Duration),
}

/// How segments rotate and how long they are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// An open segment is sealed once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// ... or once it has been open this long.
    pub segment_max_age: Duration,
    /// Sealed segments beyond this many bytes in the directory are deleted, oldest first; the
    /// newest sealed segment is always kept, so the directory may exceed it by one segment.
    pub retention_max_bytes: Option<u64>,
    /// Sealed segments older than this are deleted.
    pub retention_max_age: Option<Duration>,
    pub fsync: Fsync,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(3600),
            retention_max_bytes: Some(1 << 30),
            retention_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            fsync: Fsync::Interval(Duration::from_secs(1)),
        }
    }
}

/// What opening the log found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Open segments left by an earlier run, sealed now.
    pub recovered_segments: usize,
    /// Rows they held.
    pub recovered_rows: usize,
    /// Segments whose last message was torn (cut by a crash); the complete ones before it were
    /// kept.
    pub torn_tails: usize,
}

/// A directory of segments. Each segment holds one schema; batches of different schemas (a model's
/// versions with different logged columns, all serving at once in a canary or a shadow) go to
/// open segments of their own, up to [`MAX_OPEN`] at once, so that interleaving them costs no
/// rotation and no sync per change of schema.
pub struct SegmentLog {
    dir: PathBuf,
    options: LogOptions,
    /// The schema of what `append` is given next.
    schema: SchemaRef,
    /// The open segments, one per schema, least recently appended to first.
    open: Vec<Open>,
    next_seq: u64,
    /// Appended since the last sync.
    dirty: bool,
    last_sync: Instant,
    /// Where closed segments go to be sealed, when sealing runs in the background.
    sealer: Option<Sealer>,
    sealer_panics: SealerPanics,
}

/// Open segments of different schemas at once; appending a further schema seals the one least
/// recently appended to. A deployment serves at most a stable version and one candidate, plus
/// versions requests name: four covers them without a rotation per switch.
pub const MAX_OPEN: usize = 4;

/// Closed segments waiting for the sealer. Sealing one of 64 MiB takes seconds; beyond this many
/// waiting, `rotate` seals inline (the writer slows down, nothing is lost).
const SEALS_WAITING: usize = 4;

/// The thread that rewrites closed segments as Parquet and applies retention after each.
struct Sealer {
    tx: std::sync::mpsc::SyncSender<PathBuf>,
    thread: std::thread::JoinHandle<()>,
}

/// Panics caught on a log's sealer thread, for its owner to count (this crate has no metrics).
#[derive(Clone, Debug, Default)]
pub struct SealerPanics(Arc<AtomicU64>);

impl SealerPanics {
    /// Panics caught since the last call.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

struct Open {
    path: PathBuf,
    schema: SchemaRef,
    writer: StreamWriter<Counting>,
    opened: Instant,
    /// Appended to since this segment's last sync.
    dirty: bool,
}

impl Open {
    fn sync(&mut self) -> Result<(), LogError> {
        if self.dirty {
            self.writer
                .get_mut()
                .file
                .sync_data()
                .map_err(io(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// A file that counts what is written to it.
struct Counting {
    file: File,
    written: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

const OPEN_EXT: &str = "arrows";
const SEALED_EXT: &str = "parquet";

impl SegmentLog {
    /// Opens (creating) the directory, seals any open segment an earlier run left, applies
    /// retention. Blocking.
    pub fn open(
        dir: &Path,
        schema: SchemaRef,
        options: LogOptions,
    ) -> Result<(SegmentLog, RecoveryReport), LogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut report = RecoveryReport::default();
        let mut next_seq = 0;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if let Some(seq) = segment_seq(&path) {
                next_seq = next_seq.max(seq + 1);
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some(OPEN_EXT) => {
                    let sealed = seal(&path)?;
                    report.recovered_segments += 1;
                    report.recovered_rows += sealed.rows;
                    if sealed.torn {
                        report.torn_tails += 1;
                        tracing::warn!(segment = %path.display(), rows = sealed.rows,
                            "prediction log: a torn tail (cut by a crash) was skipped; the complete records before it were kept");
                    }
                }
                Some("tmp") => {
                    // A seal interrupted by a crash: the open segment it came from is still there.
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            options,
            schema,
            open: Vec::new(),
            next_seq,
            dirty: false,
            last_sync: Instant::now(),
            sealer: None,
            sealer_panics: SealerPanics::default(),
        };
        if let Some(max) = log
            .options
            .retention_max_bytes
            .filter(|m| *m < log.options.segment_max_bytes)
        {
            tracing::warn!(dir = %dir.display(), retention_max_bytes = max,
                segment_max_bytes = log.options.segment_max_bytes,
                "log retention is smaller than one segment: the newest sealed segment is always \
                 kept, so the directory may hold up to one segment beyond the limit");
        }
        apply_retention(&log.dir, &log.options)?;
        Ok((log, report))
    }

    /// Seals closed segments on a thread of their own (at a lower priority), so that the
    /// appender never waits for Parquet encoding: it was most of the prediction writer's time.
    /// A segment closed while the sealer is [`SEALS_WAITING`] behind is sealed inline.
    pub fn seal_in_background(&mut self, thread_name: &str) -> Result<(), LogError> {
        if self.sealer.is_some() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(SEALS_WAITING);
        let (dir, options) = (self.dir.clone(), self.options.clone());
        let panics = self.sealer_panics.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                lower_priority();
                for path in rx {
                    caught(&panics, &path, || seal_and_retain(&path, &dir, &options));
                }
            })
            .map_err(io(&self.dir))?;
        self.sealer = Some(Sealer { tx, thread });
        Ok(())
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The panics its sealer thread caught, for the owner's metrics.
    pub fn sealer_panics(&self) -> &SealerPanics {
        &self.sealer_panics
    }

    /// Changes the schema of what follows. A segment open for the old one stays open (up to
    /// [`MAX_OPEN`] schemas): going back to it costs nothing.
    pub fn set_schema(&mut self, schema: SchemaRef) -> Result<(), LogError> {
        self.schema = schema;
        Ok(())
    }

    /// Appends one batch (of the current schema) to the segment open for that schema, syncing
    /// as the policy says and rotating when the segment is full. Blocking.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), LogError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let at = match self.open.iter().position(|o| o.schema == self.schema) {
            Some(at) => at,
            None => {
                if self.open.len() >= MAX_OPEN {
                    self.rotate_at(0)?;
                }
                let open = self.create_segment()?;
                self.open.push(open);
                self.open.len() - 1
            }
        };
        // Least recently appended to first: the one to seal when a further schema comes.
        let last = self.open.len() - 1;
        self.open[at..].rotate_left(1);
        let open = &mut self.open[last];
        open.writer.write(batch).map_err(arrow(&open.path))?;
        open.writer.flush().map_err(arrow(&open.path))?;
        open.dirty = true;
        if !self.dirty {
            // The interval runs from the oldest append not yet synced.
            self.last_sync = Instant::now();
            self.dirty = true;
        }
        match self.options.fsync {
            Fsync::EveryAppend => self.sync()?,
            Fsync::Interval(_) => self.sync_if_due()?,
        }
        if self.open[last].writer.get_ref().written >= self.options.segment_max_bytes {
            self.rotate_at(last)?;
        }
        Ok(())
    }

    /// Time-based duties: the fsync interval and the segment age. Call it regularly (the writer
    /// thread does, at least once per fsync interval).
    pub fn tick(&mut self) -> Result<(), LogError> {
        self.sync_if_due()?;
        while let Some(at) = self
            .open
            .iter()
            .position(|o| o.opened.elapsed() >= self.options.segment_max_age)
        {
            self.rotate_at(at)?;
        }
        Ok(())
    }

    /// Syncs what was appended, in every open segment.
    pub fn sync(&mut self) -> Result<(), LogError> {
        for open in &mut self.open {
            open.sync()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals every open segment and applies retention.
    pub fn rotate(&mut self) -> Result<(), LogError> {
        while !self.open.is_empty() {
            self.rotate_at(0)?;
        }
        Ok(())
    }

    /// Seals one open segment and applies retention.
    fn rotate_at(&mut self, at: usize) -> Result<(), LogError> {
        let mut open = self.open.remove(at);
        open.writer.finish().map_err(arrow(&open.path))?;
        open.dirty = true;
        open.sync()?;
        self.dirty = self.open.iter().any(|o| o.dirty);
        let path = open.path.clone();
        drop(open);
        let path = match &self.sealer {
            Some(sealer) => match sealer.tx.try_send(path) {
                Ok(()) => return Ok(()),
                Err(
                    std::sync::mpsc::TrySendError::Full(path)
                    | std::sync::mpsc::TrySendError::Disconnected(path),
                ) => path,
            },
            None => path,
        };
        seal(&path)?;
        apply_retention(&self.dir, &self.options)
    }

    /// Seals everything and waits for the sealer: after a clean close every record is in a
    /// sealed segment.
    pub fn close(mut self) -> Result<(), LogError> {
        let sealed = self.rotate();
        self.stop_sealer();
        sealed
    }

    fn stop_sealer(&mut self) {
        if let Some(Sealer { tx, thread }) = self.sealer.take() {
            drop(tx);
            let _ = thread.join();
        }
    }

    /// Bytes in the directory's segments, the open one included.
    pub fn bytes_on_disk(&self) -> u64 {
        segments(&self.dir)
            .map(|list| list.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }

    /// Seconds since the oldest unsynced append (0 when everything is synced): how far the log
    /// lags behind what it was given.
    pub fn unsynced_for(&self) -> Duration {
        if self.dirty {
            self.last_sync.elapsed()
        } else {
            Duration::ZERO
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sync_if_due(&mut self) -> Result<(), LogError> {
        if let Fsync::Interval(every) = self.options.fsync {
            if self.dirty && self.last_sync.elapsed() >= every {
                self.sync()?;
            }
        }
        Ok(())
    }

    fn create_segment(&mut self) -> Result<Open, LogError> {
        let start_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .dir
            .join(format!("{start_ms:013}-{:06}.{OPEN_EXT}", self.next_seq));
        self.next_seq += 1;
        let file = File::create(&path).map_err(io(&path))?;
        let writer = StreamWriter::try_new(Counting { file, written: 0 }, &self.schema)
            .map_err(arrow(&path))?;
        sync_dir(&self.dir);
        Ok(Open {
            path,
            schema: Arc::clone(&self.schema),
            writer,
            opened: Instant::now(),
            dirty: false,
        })
    }
}

impl Drop for SegmentLog {
    /// A log dropped without `close` still lets the sealer finish what it was given: a segment
    /// left open is sealed at the next start either way.
    fn drop(&mut self) {
        self.stop_sealer();
    }
}

/// Runs one seal on the sealer thread. A panic (a bug, or a library's on a file it cannot
/// handle) costs that seal, never the thread: the segment stays open on disk and is sealed at
/// the next start, and the segments after it are still sealed.
fn caught(panics: &SealerPanics, path: &Path, seal: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(seal)) {
        panics.0.fetch_add(1, Ordering::Relaxed);
        tracing::error!(segment = %path.display(), panic = panic_message(&*panic),
            "log sealer panicked; the segment is sealed at the next start");
    }
}

/// Seals one closed segment and applies retention, on the sealer thread: a failure is logged
/// (the open segment stays, and the next start seals it).
fn seal_and_retain(path: &Path, dir: &Path, options: &LogOptions) {
    if let Err(e) = seal(path) {
        tracing::error!(segment = %path.display(), error = %e,
            "prediction log: segment not sealed; it is kept open and sealed at the next start");
    }
    if let Err(e) = apply_retention(dir, options) {
        tracing::error!(dir = %dir.display(), error = %e, "prediction log: retention");
    }
}

/// Deletes sealed segments beyond the retention limits, oldest first, never the newest sealed
/// one: what was just written (acknowledged feedback, the last records) is kept even when a
/// single segment is larger than the limit. It may run on the appender and the sealer at once:
/// a segment another one deleted first is skipped.
fn apply_retention(dir: &Path, options: &LogOptions) -> Result<(), LogError> {
    let (max_bytes, max_age) = (options.retention_max_bytes, options.retention_max_age);
    if max_bytes.is_none() && max_age.is_none() {
        return Ok(());
    }
    let list = segments(dir)?;
    let mut total: u64 = list.iter().map(|s| s.bytes).sum();
    let now = SystemTime::now();
    let newest_sealed = list.iter().rposition(|s| s.sealed);
    let deletable = list
        .iter()
        .enumerate()
        .filter(|(i, s)| s.sealed && Some(*i) != newest_sealed)
        .map(|(_, s)| s);
    for s in deletable {
        let too_big = max_bytes.is_some_and(|m| total > m);
        let too_old =
            max_age.is_some_and(|m| now.duration_since(s.modified).is_ok_and(|age| age > m));
        if !(too_big || too_old) {
            continue;
        }
        match std::fs::remove_file(&s.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&s.path)(e)),
        }
        total = total.saturating_sub(s.bytes);
        tracing::info!(segment = %s.path.display(), bytes = s.bytes,
                reason = if too_old { "age" } else { "size" }, "prediction log: segment deleted by retention");
    }
    Ok(())
}

/// A segment file, oldest first by name.
struct Segment {
    path: PathBuf,
    bytes: u64,
    modified: SystemTime,
    sealed: bool,
}

fn segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let sealed = match path.extension().and_then(|e| e.to_str()) {
            Some(SEALED_EXT) => true,
            Some(OPEN_EXT) => false,
            _ => continue,
        };
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Sealed or deleted between the listing and this look.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        out.push(Segment {
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            sealed,
            path,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    // A segment being sealed is there twice for a moment: counting both copies would make
    // retention delete more than its limit asks (the newest sealed segment included).
    let sealed: std::collections::HashSet<PathBuf> = out
        .iter()
        .filter(|s| s.sealed)
        .map(|s| s.path.clone())
        .collect();
    out.retain(|s| s.sealed || !sealed.contains(&s.path.with_extension(SEALED_EXT)));
    Ok(out)
}

/// The sequence number in a segment's name, `<start>-<seq>.<ext>`.
fn segment_seq(path: &Path) -> Option<u64> {
    let stem = path.file_name()?.to_str()?.split('.').next()?;
    stem.split_once('-')?.1.parse().ok()
}

/// What sealing one open segment found.
struct Sealed {
    rows: usize,
    torn: bool,
}

/// Rewrites an open segment as Parquet (temporary file, sync, rename, sync) and removes it. A
/// segment with no complete batch is only removed.
fn seal(open: &Path) -> Result<Sealed, LogError> {
    let (batches, torn) = read_stream(open)?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    if let Some(first) = batches.first() {
        let sealed = open.with_extension(SEALED_EXT);
        let tmp = open.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, first.schema(), Some(properties))
            .map_err(parquet_err(&tmp))?;
        for batch in &batches {
            if batch.schema() != first.schema() {
                // One segment holds one schema; a mismatch means a corrupt file, keep what fits.
                break;
            }
            writer.write(batch).map_err(parquet_err(&tmp))?;
        }
        let file = writer.into_inner().map_err(parquet_err(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &sealed).map_err(io(&sealed))?;
    }
    std::fs::remove_file(open).map_err(io(open))?;
    if let Some(dir) = open.parent() {
        sync_dir(dir);
    }
    Ok(Sealed { rows, torn })
}

/// For background threads (sealing, drift comparison): on a machine whose cores the request
/// path needs, the scheduler should give them only what is left over.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes the calling thread's nice value
    // (Linux threads are scheduled as tasks); it reads and writes no memory of ours.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// The text of a caught panic's payload (a `&str` or a `String`, as `panic!` makes them).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn arrow(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> LogError + '_ {
    move |source| LogError::Arrow {
        path: path.to_path_buf(),
        source,
    }
}

fn parquet_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> LogError + '_ {
    move |source| LogError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: usize) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        path
    }

    /// The sealer has written `…-3.parquet` but not yet removed `…-3.arrows`. The sealed
    /// segments fit the limit exactly, so retention must keep every one of them: counting the
    /// IPC copy as well would delete the oldest.
    #[test]
    fn retention_counts_a_segment_caught_mid_seal_once() {
        let dir = tempfile::tempdir().unwrap();
        let sealed: Vec<PathBuf> = (1..=3)
            .map(|seq| write(dir.path(), &format!("100-{seq}.{SEALED_EXT}"), 4_000))
            .collect();
        let mid_seal = write(dir.path(), &format!("100-3.{OPEN_EXT}"), 9_000);
        let open = write(dir.path(), &format!("100-4.{OPEN_EXT}"), 1_000);

        let listed = segments(dir.path()).unwrap();
        let names: Vec<_> = listed.iter().map(|s| s.path.clone()).collect();
        assert_eq!(names, [&sealed[..], std::slice::from_ref(&open)].concat());

        let options = LogOptions {
            retention_max_bytes: Some(13_000),
            retention_max_age: None,
            ..LogOptions::default()
        };
        apply_retention(dir.path(), &options).unwrap();
        for path in sealed.iter().chain([&mid_seal, &open]) {
            assert!(path.exists(), "{} kept", path.display());
        }

        // One byte under the limit: only the oldest sealed segment goes.
        let options = LogOptions {
            retention_max_bytes: Some(12_999),
            ..options
        };
        apply_retention(dir.path(), &options).unwrap();
        assert!(!sealed[0].exists());
        for path in sealed[1..].iter().chain([&mid_seal, &open]) {
            assert!(path.exists(), "{} kept", path.display());
        }
    }

    #[test]
    fn a_panicking_seal_is_caught_and_counted() {
        let panics = SealerPanics::default();
        caught(&panics, Path::new("x.arrows"), || {
            panic!("a seal that fails")
        });
        caught(&panics, Path::new("y.arrows"), || {});
        assert_eq!(panics.take(), 1);
        assert_eq!(panics.take(), 0, "taken once");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*payload), "owned");
    }

    /// A limit smaller than one segment: everything but the newest sealed segment goes, and the
    /// newest stays however far beyond the limit it is (it holds what was just acknowledged).
    #[test]
    fn retention_never_deletes_the_newest_sealed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            retention_max_bytes: Some(100),
            retention_max_age: Some(Duration::ZERO),
            ..LogOptions::default()
        };
        let only = write(dir.path(), &format!("100-1.{SEALED_EXT}"), 5_000);
        apply_retention(dir.path(), &options).unwrap();
        assert!(only.exists(), "the only sealed segment is kept");

        let newer = write(dir.path(), &format!("100-2.{SEALED_EXT}"), 5_000);
        let open = write(dir.path(), &format!("100-3.{OPEN_EXT}"), 5_000);
        apply_retention(dir.path(), &options).unwrap();
        assert!(!only.exists(), "an older one goes");
        assert!(newer.exists() && open.exists());
    }
}
