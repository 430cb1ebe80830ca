//! The prediction log on disk: a directory per model of time-ordered segment files.
//!
//! **Format.** The open segment is an Arrow IPC *stream* (`<start>-<seq>.arrows`): appending a
//! record batch is one self-delimiting message, so a crash can only tear the last message, and a
//! reader keeps every complete one before it. On rotation (size or age) the open segment is
//! sealed: rewritten as Parquet (`<start>-<seq>.parquet`, through a temporary file and a rename),
//! then deleted. Sealed segments are plain Parquet files that pyarrow, pandas and DuckDB read with
//! no code of ours (`duckdb.sql("select * from 'log/iris/*.parquet'")`), compressed (snappy) and
//! column-oriented for the feature scans drift and training do; the open segment is still readable
//! by `pyarrow.ipc.open_stream`. Parquet alone cannot be appended to safely (its footer is written
//! at close), which is why the open segment is IPC.
//!
//! **Durability.** Batches are synced to disk after each append or every `fsync` interval, as
//! configured. A clean close seals everything. At open, segments left by a crash are recovered:
//! their complete messages are sealed to Parquet, a torn tail is logged and skipped, never fatal.
//!
//! **Retention.** After each seal, the oldest sealed segments go while the directory holds more
//! than `retention_max_bytes` or a segment is older than `retention_max_age`; the newest sealed
//! segment never goes, so what was just written (acknowledged feedback) outlives a limit smaller
//! than one segment.

mod prediction;
mod read;
mod segment;

pub use prediction::{
    derive_layout, format_number, Arm, ColumnSource, LayoutError, LayoutRequest, LoggedColumn,
    PredictionBatch, PredictionLayout, RequestRecord, Status, TensorInfo, Value, ValueKind,
    MAX_LOGGED_COLUMNS, META_COLUMNS,
};
pub use read::{read_dir, ReadReport};
pub use segment::{
    lower_priority, panic_message, Fsync, LogOptions, RecoveryReport, SealerPanics, SegmentLog,
    MAX_OPEN,
};

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Arrow {
        path: std::path::PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("{}: {source}", path.display())]
    Parquet {
        path: std::path::PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
}
