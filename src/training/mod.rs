//! Training, driven by the server: `cairn train` and `cairn runs` on the command line
//! ([`cli`]), training jobs started over HTTP or by drift ([`jobs`]), and the automatic
//! retraining policy ([`retrain`]). The work itself is `cairn-train`'s; this module reads
//! configs, supplies the serving version for the gate and publishes what passes.

pub mod cli;
pub mod config_path;
pub mod jobs;
mod publish;
pub mod retrain;

pub use cli::{runs, summary, train, Bars, RunsArgs, RunsCommand, TrainArgs, TrainResult};
