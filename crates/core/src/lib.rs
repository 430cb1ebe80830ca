//! The core of cairn that every other part shares and that depends on nothing heavy: host
//! tensors, the protocol-free inference request, the engine traits and load options, a model's
//! configuration, and bounded file reads. Engines, the server, monitoring and training build on
//! it; it knows none of them.

pub mod bounded;
pub mod config;
pub mod engine;
pub mod onnx_scan;
pub mod request;
pub mod tensor;
