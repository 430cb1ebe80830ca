//! A model's configuration (`config.toml`) and the error every configuration file reports.
//! Parsing and validation live here; nothing here starts anything.

pub mod model;

use std::path::PathBuf;

pub use model::{
    AccuracyTest, BatchShape, DynamicBatching, EngineConfig, EngineKind, Fallback, ModelConfig,
    MonitoringConfig, OnNewVersion, Precision, Provider, QueuePolicy, RetrainConfig, RetrainTrial,
    RolloutConfig, TensorConfig, ThresholdError, Thresholds, VersionPolicy, Warmup,
    DRIFT_STATISTICS,
};

/// A configuration file that cannot be used. Messages name the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: is larger than the limit of {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: key '{key}': {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The largest configuration file read; real ones are a few KiB.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Reads a configuration file under [`MAX_CONFIG_FILE_BYTES`].
pub fn read_config_text(path: &std::path::Path) -> Result<String, ConfigError> {
    crate::bounded::read_to_string(path, MAX_CONFIG_FILE_BYTES).map_err(|e| match e {
        crate::bounded::BoundedReadError::Io(source) => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
        crate::bounded::BoundedReadError::TooLarge { limit } => ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit,
        },
    })
}
