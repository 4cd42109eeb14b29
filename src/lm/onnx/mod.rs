//! ONNX: the protobuf messages (generated from the vendored `proto/onnx.proto`
//! at build time), the exporter for the built-in model, and the ONNX Runtime
//! wrapper that runs any causal-LM export.

pub mod export;
pub mod runtime;
pub mod stats;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
