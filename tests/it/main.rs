//! Every integration test in one binary, so the server and its engines are linked once.
//!
//! - `http_api`: the KServe V2 REST API over real HTTP, every endpoint and every error.
//! - `batching`: dynamic batching, overload, cancellation, statistics and metrics.
//! - `rollout`: hot reload, publishing, deployments and their transitions under load.
//! - `hostile`: hostile input, one test per known attack.
//! - `monitoring`: the prediction log, drift, feedback and quality.
//! - `cli`: the `cairn` binary as a user runs it.
//! - `offline`: `cairn baseline` and `cairn drift` on files.
//! - `training`: `cairn train` and `cairn runs`, and a trained version served.
//! - `engine_conformance`: every engine against onnxruntime's recorded outputs.
//! - `service`: the service layer's one inference path, in process with a codec of its own.
//! - `tls`: HTTPS and gRPC over TLS, mutual TLS, certificate rotation.
//! - `object_store`: a `file://` object-store repository: mirror, complete versions, deletion.
//! - `log_store`: the prediction log uploaded to a `file://` store, and read back from it by
//!   `cairn drift`, `cairn baseline` and `cairn train`.
//! - `publish_store`: publishing to an object-store repository: a job's version reaches every
//!   replica as trained, racing `cairn train` runs get different numbers, a lost lease refuses.
//! - `zoo`: tree ensembles from skl2onnx, XGBoost and LightGBM against onnxruntime's answers,
//!   on every engine and over HTTP.
//! - `decoder_props`: property tests of the decoders and config parsers, with the counting
//!   allocator that this binary installs.

mod batching;
mod cli;
mod common;
mod decoder_props;
mod engine_conformance;
mod engines;
mod hostile;
mod http_api;
mod imports;
mod log_store;
mod monitoring;
mod object_store;
mod offline;
mod pages;
mod publish_store;
mod rollout;
mod service;
mod tls;
mod training;
mod zoo;
