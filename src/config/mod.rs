//! Configuration: the server's settings (`configs/server.toml`, CLI flags, environment) here,
//! and each model's `config.toml` from `cairn_core::config`. Nothing here starts anything.

mod server;

pub use cairn_core::config::*;
pub use server::{
    ConnectionLimits, LoadCheck, LoadLimits, MonitorSettings, ServerConfig, ServerSettings,
    TrainingSettings, WhenFull, DEFAULT_MAX_BODY_BYTES,
};
