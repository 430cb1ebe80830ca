//! Training, driven by the server: training jobs started over HTTP or by drift ([`jobs`]) and
//! the automatic retraining policy ([`retrain`]); `cairn train` and `cairn runs` on the command
//! line are `cli::training`, which shares [`publish`]. The work itself is `cairn-train`'s; this
//! module reads configs, supplies the serving version for the gate and publishes what passes.

pub mod config_path;
pub mod jobs;
pub(crate) mod publish;
pub mod retrain;
