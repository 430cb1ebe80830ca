//! Training for cairn.

pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod nn;
pub mod pipeline;
pub mod prep;
pub mod rng;
pub mod runs;
pub mod split;

pub use config::TrainConfig;
pub use pipeline::{run, Outcome, Progress, Quiet, Serving, TrainError};
