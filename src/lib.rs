//! cairn: a KServe V2 / Triton-compatible inference server.

pub use cairn_core::{bounded, request, tensor};

pub mod batching;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gpu_telemetry;
pub mod grpc;
pub mod http;
pub mod lease;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod monitoring;
pub mod offload;
pub mod periodic;
pub mod protocol;
pub mod repository;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod service;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod training;
