//! ONNX: the protobuf messages (generated from the vendored `proto/onnx.proto`
//! at build time), the exporter for the built-in model, the ONNX Runtime
//! wrapper that runs any causal-LM export, and the log-prob graph run on its
//! logits.

pub mod export;
pub mod head;
pub mod logprobs;
pub mod runtime;
pub mod statgraph;
pub mod weights;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
