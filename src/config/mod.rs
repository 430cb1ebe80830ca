//! Configuration: the server's settings (`configs/server.toml`, CLI flags, environment) and each
//! model's `config.toml`. Parsing and validation live here; nothing here starts anything.

pub mod model;
mod server;

use std::path::PathBuf;

pub use model::{
    DynamicBatching, ModelConfig, OnNewVersion, QueuePolicy, RolloutConfig, TensorConfig,
    VersionPolicy, Warmup,
};
pub use server::{ServerConfig, ServerSettings};

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
    #[error("{}: key '{key}': {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}
