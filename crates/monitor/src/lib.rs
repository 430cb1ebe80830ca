//! Monitoring: what the server saw and how it compares with what the model was trained on.
//!
//! - [`column`]: named feature columns, the common shape of baselines, windows and logs.
//! - [`category`]: the bounds on categorical values (their length, their number per feature).
//! - [`stats`]: the drift statistics (PSI, Jensen–Shannon, KS, Wasserstein, chi-squared), defined
//!   exactly as numpy/scipy compute them.
//! - [`baseline`]: a version's training-data summary (`baseline.json`).
//! - [`report`]: a drift report of a window against a baseline, with thresholds.
//! - [`quality`]: live quality from ground truth (accuracy, precision/recall/F1, ROC AUC,
//!   MAE/RMSE).
//! - [`log`]: the prediction log on disk (Arrow IPC open segments sealed to Parquet).
//! - [`window`]: live drift windows of one version's rows.
//! - [`feedback`]: ground truth as stored, and the index of recent predictions it is matched to.
//! - [`dataset`]: columns read from CSV, Parquet or a prediction log, for offline reports.
//! - [`html`]: a drift report as one self-contained HTML page (inline CSS and SVG, no script).
//!
//! Nothing here knows HTTP, routing or an engine; the server feeds records in and asks for reports.

pub mod baseline;
pub mod category;
pub mod column;
pub mod dataset;
pub mod feedback;
pub mod html;
pub mod log;
pub mod quality;
pub mod report;
pub mod stats;
pub mod window;
