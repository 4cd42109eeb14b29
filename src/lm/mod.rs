//! Language models: the built-in transformer (`model`), its training loop
//! (`train`) and the fused training ops that speed it up bit for bit (`fused`), ONNX export and the ONNX Runtime wrapper (`onnx`), finding
//! the runtime library (`ortlib`), and checkpoint evaluation over a corpus
//! (`eval`). Nothing here knows of seeds, stages or the store.

pub mod eval;
pub mod fused;
pub mod model;
pub mod onnx;
pub mod ortlib;
pub mod train;
